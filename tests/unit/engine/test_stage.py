"""utils.engine.stage: the frame of a stage script's main (start_run, finish_run)."""
import argparse

import yaml

from utils.engine.distributed import DistContext
from utils.engine.stage import finish_run, start_run


def _args(out) -> argparse.Namespace:
    return argparse.Namespace(device="cpu", seed=0, deterministic=False, output_dir=str(out), lr=0.25)


def test_start_run_writes_the_options_where_asked(tmp_path):
    start_run(_args(tmp_path / "train"))                       # a training step: its own folder
    assert yaml.safe_load((tmp_path / "train" / "args.yaml").read_text())["lr"] == 0.25
    start_run(_args(tmp_path / "test"), tmp_path / "test" / "test_args")   # a test step: beside it
    assert yaml.safe_load((tmp_path / "test" / "test_args" / "args.yaml").read_text())["lr"] == 0.25
    assert not (tmp_path / "test" / "args.yaml").exists()


def test_finish_run_prints_on_rank_0_only(capsys):
    finish_run(DistContext(rank=1, world_size=2), "written")
    finish_run(DistContext(), None)
    assert capsys.readouterr().out == ""
    finish_run(DistContext(), "model written to x/model.pth")
    assert capsys.readouterr().out == "model written to x/model.pth\n"
