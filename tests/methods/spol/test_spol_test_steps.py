"""A SPOL test step called in-process (its ``main``, as the demo and the tests call it) builds the
network its training run trained: the cam and seg test steps, given --backbone resnet18 but no
--output-stride (as the demo calls them), read output stride 8 from the training run in their folder.
The same weights load into a stride-32 network without a word, so the model built is what is
checked. A different --output-stride given is refused with one line before anything is written."""
import pytest
import torch

from spol.cam import test as cam_test
from spol.model import CAMModel, SegModel
from spol.options import PARSERS
from spol.seg import test as seg_test
from utils.config import parse_args, write_config
from utils.data.layouts import load_records
from utils.engine.checkpoint import save_checkpoint
from utils.errors import RunError
from utils.evaluation.handoff import write_predictions

TRAINED = ["--backbone", "resnet18", "--output-stride", "8", "--resize-size", "40", "--input-size", "32"]
TEST = ["--device", "cpu", "--workers", "0", "--batch-size", "2", "--backbone", "resnet18"]


def stride8_run(folder, stage: str, model) -> None:
    """A training run's folder as ``spol/<stage>/train.py --backbone resnet18 --output-stride 8`` leaves
    it: the options it ran with (args.yaml) and the model's weights (model.pth)."""
    folder.mkdir(parents=True)
    write_config(parse_args(PARSERS[f"{stage}_train"](), [*TRAINED, "--output-dir", str(folder)],
                            stage=f"{stage}_train"), folder / "args.yaml")
    save_checkpoint(folder / "model.pth", model.state_dict())


def spy(monkeypatch, module, name: str) -> list:
    """The ``output_stride`` of every model ``module.<name>(...)`` builds."""
    built, real = [], getattr(module, name)

    def build(*args, **kwargs):
        built.append(kwargs.get("output_stride"))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, build)
    return built


def test_cam_test_builds_the_stride_of_its_training_run(tiny_cub, tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    cam = tmp_path / "cam"
    stride8_run(cam, "cam", CAMModel(2, pretrained="none", backbone="resnet18", output_stride=8))
    built = spy(monkeypatch, cam_test, "CAMModel")
    argv = ["--data-root", str(tiny_cub), "--output-dir", str(cam), *TEST, "--mask-workers", "1"]
    cam_test.main(parse_args(cam_test.get_args_parser(), argv, stage="cam_test"))
    assert built == [8] and "notice: --output-stride 8, --resize-size 40 read from" in capsys.readouterr().err
    assert len(list((cam / "pseudo_masks").rglob("*.png"))) == 2
    before = sorted(p.name for p in cam.iterdir())
    with pytest.raises(RunError, match="the training run used --output-stride 8, this test step was given "
                                       "--output-stride 32"):
        cam_test.main(parse_args(cam_test.get_args_parser(), [*argv, "--output-stride", "32"], stage="cam_test"))
    assert built == [8] and sorted(p.name for p in cam.iterdir()) == before


def test_seg_test_builds_the_stride_of_its_training_run(tiny_cub, tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    seg = tmp_path / "seg"
    stride8_run(seg, "seg", SegModel(pretrained="none", backbone="resnet18", output_stride=8))
    test = load_records(tiny_cub, "cub", "test")
    write_predictions(tmp_path / "cls" / "predictions.csv", [r.image_id for r in test], [r.label for r in test],
                      [[r.label] for r in test])
    built = spy(monkeypatch, seg_test, "SegModel")
    argv = ["--data-root", str(tiny_cub), "--output-dir", str(seg), "--cls-dir", str(tmp_path / "cls"), *TEST,
            "--protocol", "wsol", "--grid-images", "0", "--cam-curve-interval", "0.1"]
    seg_test.main(parse_args(seg_test.get_args_parser(), argv, stage="seg_test"))
    assert built == [8] and "--output-stride 8" in capsys.readouterr().err
    assert (seg / "wsol" / "metrics.json").is_file() and (seg / "test_args.yaml").is_file()
    with pytest.raises(RunError, match="the training run used --output-stride 8"):
        seg_test.main(parse_args(seg_test.get_args_parser(), [*argv, "--output-stride", "16"], stage="seg_test"))
    assert built == [8]
