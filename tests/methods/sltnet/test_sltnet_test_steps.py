"""SLT-Net's localizer test step called in-process (its ``main``, as the demo and the tests call it)
builds the network its training run trained: given --backbone resnet18 --cam-feature layer3 but no
--output-stride, it reads output stride 8 from the training run in --localizer-dir. The same weights
load into a stride-32 network without a word, so the network built is what is checked. A different
--output-stride given is refused with one line before anything is written."""
import json

import pytest
import torch

from sltnet.localizer import test as localizer_test
from sltnet.model import build_branch
from sltnet.options import PARSERS, resolve_defaults
from utils.config import parse_args, write_config
from utils.engine.checkpoint import save_checkpoint
from utils.errors import RunError

MODEL = ["--backbone", "resnet18", "--cam-feature", "layer3", "--share-backbone"]


def test_localizer_test_builds_the_stride_of_its_training_run(tiny_cub, tmp_path, monkeypatch, capsys):
    loc = tmp_path / "localizer"
    loc.mkdir()
    trained = resolve_defaults(parse_args(PARSERS["localizer_train"](), [
        *MODEL, "--output-stride", "8", "--resize-size", "40", "--input-size", "32", "--top-k", "1",
        "--pretrained", "none", "--output-dir", str(loc)], stage="localizer_train"), "localizer")
    torch.manual_seed(0)
    save_checkpoint(loc / "model.pth", build_branch(trained, 2).state_dict())
    write_config(trained, loc / "args.yaml")  # as sltnet/localizer/train.py leaves its folder
    built, real = [], localizer_test.build_branch

    def spy(args, *a, **kw):
        built.append(args.output_stride)
        return real(args, *a, **kw)

    monkeypatch.setattr(localizer_test, "build_branch", spy)
    argv = ["--data-root", str(tiny_cub), *MODEL, "--localizer-dir", str(loc), "--output-dir", str(tmp_path / "test"),
            "--device", "cpu", "--workers", "0", "--batch-size", "2", "--no-scoremaps", "--no-maxboxacc"]
    localizer_test.main(parse_args(localizer_test.get_args_parser(), argv, stage="localizer_test"))
    assert built == [8] and "--output-stride 8" in capsys.readouterr().err
    assert json.loads((tmp_path / "test" / "boxes.json").read_text())["downsampling_factor"] == 8.0
    with pytest.raises(RunError, match="the training run used --output-stride 8, this test step was given "
                                       "--output-stride 32"):
        localizer_test.main(parse_args(localizer_test.get_args_parser(),
                                       [*argv, "--output-stride", "32", "--output-dir", str(tmp_path / "refused")],
                                       stage="localizer_test"))
    assert built == [8] and not (tmp_path / "refused").exists()
