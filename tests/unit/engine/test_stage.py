"""utils.engine.stage: the frame of a stage script's main (start_run, save_args, inherit_training_options)."""
import argparse
import os

import pytest
import torch
import yaml

from utils.config import parse_args
from utils.engine import rundir
from utils.engine.stage import inherit_training_options, save_args, start_run
from utils.errors import RunError
from utils.options import Inherit


def _train_args(out, **kw) -> argparse.Namespace:
    """A training step's options: it has the TRAIN_ONLY ones (``overwrite``)."""
    return argparse.Namespace(device="cpu", seed=0, deterministic=False, output_dir=str(out), lr=0.25,
                              overwrite=False, **kw)


def _test_args(out, **kw) -> argparse.Namespace:
    return argparse.Namespace(device="cpu", seed=0, deterministic=False, output_dir=str(out), lr=0.25, **kw)


def _held(folder) -> bool:
    return os.path.realpath(folder) in rundir._held


def _files(folder) -> dict:
    return {p.name: p.read_text() for p in sorted(folder.iterdir()) if p.name != rundir.LOCK_NAME}


def test_a_training_step_holds_its_folder_and_writes_args_yaml(tmp_path):
    out = tmp_path / "train"
    with start_run(_train_args(out)) as ctx:
        assert _held(out) and ctx.world_size == 1
        assert save_args(_train_args(out), ctx) == out / "args.yaml"
    assert not _held(out)
    assert yaml.safe_load((out / "args.yaml").read_text())["lr"] == 0.25


def test_a_test_step_replaces_its_outputs_only_when_it_ends(tmp_path):
    out = tmp_path / "stage"
    out.mkdir()
    (out / "model.pth").write_text("the training run's")
    (out / "predictions.csv").write_text("old predictions")
    (out / "metrics.json").write_text("old metrics")
    before = _files(out)
    names = ("predictions.csv", "metrics.json")
    for failure in (RuntimeError("a bug"), KeyboardInterrupt()):
        with pytest.raises(type(failure)):
            with start_run(_test_args(out), outputs=names) as ctx:
                assert not (out / "predictions.csv").exists() and _held(out)  # aside while the step runs
                (out / "predictions.csv").write_text("half")
                save_args(_test_args(out), ctx)
                raise failure
        assert _files(out) == before and not _held(out)  # back as they were, the partial outputs gone
        assert not [p for p in out.iterdir() if p.name.startswith(rundir.PREVIOUS_PREFIX)]
    with start_run(_test_args(out), outputs=names) as ctx:
        (out / "predictions.csv").write_text("new predictions")
        save_args(_test_args(out), ctx)
    after = _files(out)
    assert after.pop("test_args.yaml") and after == {"model.pth": "the training run's",
                                                     "predictions.csv": "new predictions"}
    assert not [p for p in out.iterdir() if p.name.startswith(rundir.PREVIOUS_PREFIX)] and not _held(out)


def test_a_step_says_which_it_is(tmp_path):
    with pytest.raises(ValueError, match="a test step names its outputs"):
        start_run(_test_args(tmp_path))
    with pytest.raises(ValueError, match="a training step does not"):
        start_run(_train_args(tmp_path), outputs=("metrics.json",))


def _parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output-dir")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--resize-size", type=int, default=256)
    parser.add_argument("--weights", default=None)
    return parser


SPEC = Inherit(folder="output_dir", options=("backbone",), soft=("resize_size",), unless="weights")


def test_inherit_takes_what_is_not_given_and_refuses_a_different_model(tmp_path, capsys):
    (tmp_path / "args.yaml").write_text(yaml.safe_dump({"backbone": "resnet18", "resize_size": 72, "lr": 0.5}))
    args = parse_args(_parser(), ["--output-dir", str(tmp_path)], stage="x")
    assert inherit_training_options(args, SPEC) == ["--backbone resnet18", "--resize-size 72"]
    assert (args.backbone, args.resize_size) == ("resnet18", 72) and not hasattr(args, "lr")
    assert capsys.readouterr().err == (f"notice: --backbone resnet18, --resize-size 72 read from "
                                       f"{tmp_path / 'args.yaml'} (the training run)\n")
    args = parse_args(_parser(), ["--output-dir", str(tmp_path), "--resize-size", "80"], stage="x")
    inherit_training_options(args, SPEC)
    assert (args.backbone, args.resize_size) == ("resnet18", 80)  # a soft option given wins
    args = parse_args(_parser(), ["--output-dir", str(tmp_path), "--backbone", "vgg16"], stage="x")
    with pytest.raises(RunError, match=r"args\.yaml: the training run used --backbone resnet18, this test step "
                                       r"was given --backbone vgg16: drop --backbone"):
        inherit_training_options(args, SPEC)
    args = parse_args(_parser(), ["--output-dir", str(tmp_path), "--weights", "w.pth"], stage="x")
    assert inherit_training_options(args, SPEC) == [] and args.backbone == "resnet50"  # other weights: as given


def test_inherit_reads_a_checkpoint_without_args_yaml_and_nothing_from_an_empty_folder(tmp_path):
    args = parse_args(_parser(), ["--output-dir", str(tmp_path)], stage="x")
    assert inherit_training_options(args, SPEC) == []
    torch.save({"args": {"backbone": "resnet18"}, "epoch": 1}, tmp_path / "checkpoint.pth")
    assert inherit_training_options(args, SPEC) == ["--backbone resnet18"]


def test_start_run_applies_inherit_before_anything_is_moved(tmp_path):
    train = tmp_path / "train"
    train.mkdir()
    (train / "args.yaml").write_text(yaml.safe_dump({"backbone": "resnet18"}))
    spec = Inherit(folder="train_dir", options=("backbone",))
    args = _test_args(tmp_path / "test", train_dir=str(train), backbone="resnet50")
    with start_run(args, inherit=spec, outputs=()):
        assert args.backbone == "resnet18"
    args = parse_args(_parser(), ["--output-dir", str(tmp_path / "refused"), "--backbone", "vgg16"], stage="x")
    args.train_dir, args.device, args.seed = str(train), "cpu", 0
    with pytest.raises(RunError, match="--backbone resnet18, this test step was given --backbone vgg16"):
        with start_run(args, inherit=[spec], outputs=("metrics.json",)):
            pass
    assert not (tmp_path / "refused").exists()
