"""utils.engine.tensorboard: ``--tensorboard`` sends every log.jsonl line of a training run, and a test
step's numbers and picture, to a SummaryWriter in ``<output-dir>/tensorboard/`` (checked with a writer
that records its calls); without the tensorboard package the option is one ``error:`` line."""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from utils.engine import tensorboard
from utils.engine.distributed import DistContext
from utils.engine.trainer import Trainer
from utils.errors import DataError
from utils.paths import REPO_ROOT
from utils.ranges import TENSORBOARD_MISSING, check_options

TOY = REPO_ROOT / "tests" / "toy_train.py"
_spec = importlib.util.spec_from_file_location("toy_train", TOY)
toy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toy)


class FakeWriter:
    """Records what a ``SummaryWriter`` is asked to do."""
    made: list = []

    def __init__(self, log_dir, purge_step=None):
        self.log_dir, self.purge_step = log_dir, purge_step
        self.scalars, self.images, self.closed = [], [], False
        FakeWriter.made.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_image(self, tag, image, step, dataformats="CHW"):
        self.images.append((tag, np.array(image), step, dataformats))

    def flush(self):
        pass

    def close(self):
        self.closed = True


@pytest.fixture
def fake_writer(monkeypatch):
    FakeWriter.made = []
    monkeypatch.setattr(tensorboard, "_summary_writer", lambda: FakeWriter)
    return FakeWriter


def test_scalars_keep_the_numbers_of_a_record():
    record = {"stage": "toy", "event": "epoch_end", "epoch": 1, "step": 3, "steps": 3, "global_step": 6,
              "lr": 0.1, "lr_groups": [0.1, 0.01], "loss": 2.5, "images_per_s": 40, "diverged": False,
              "nan": float("nan"), "note": "text", "curve": [[0.1, 0.2]], "long": list(range(17)),
              "spol": {"top1_loc": 50.0, "split": "test", "per_iou": {"30": 70.0}}}
    assert tensorboard.scalars(record, "epoch") == {
        "epoch/lr": 0.1, "epoch/lr_groups/0": 0.1, "epoch/lr_groups/1": 0.01, "epoch/loss": 2.5,
        "epoch/images_per_s": 40.0, "epoch/spol/top1_loc": 50.0, "epoch/spol/per_iou/30": 70.0}


def _args(out, **kw):
    base = dict(output_dir=str(out), batch_size=2, epochs=2, workers=0, seed=0, amp="off", deterministic=False,
                resume=True, log_every=1, save_every_steps=0, max_steps_per_epoch=0, tensorboard=True)
    base.update(kw)
    return argparse.Namespace(**base)


def _loss(net, batch):
    loss = torch.nn.functional.cross_entropy(net(batch["image"]).float(), batch["label"])
    return loss, {"aux": 0.5}


def _train(out, crash_at: int | None = None, **kw):
    """Train the toy network; ``crash_at``: the loss of that step raises (a crash mid-run)."""
    torch.manual_seed(0)
    model = toy.ToyNet(0.0)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), _args(out, **kw), DistContext(),
                      stage_name="toy")

    def loss_fn(net, batch):
        if trainer.global_step + 1 == crash_at:  # the step about to be trained
            raise RuntimeError("crash")
        return _loss(net, batch)

    trainer.fit(toy.ToyDataset(6), loss_fn)


def _expected(lines):
    calls = []
    for line in lines:
        prefix = "epoch" if line.get("event") == "epoch_end" else "train"
        calls += [(tag, value, line["global_step"]) for tag, value in tensorboard.scalars(line, prefix).items()]
    return calls


def test_training_sends_every_log_line_to_the_writer(tmp_path, fake_writer):
    _train(tmp_path)
    [writer] = fake_writer.made
    assert writer.log_dir == str(tmp_path / "tensorboard") and writer.purge_step is None and writer.closed
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(lines) == 8  # 2 epochs x (3 steps + the epoch's end)
    assert writer.scalars == _expected(lines)
    first, end = lines[0], lines[3]
    assert ("train/loss", first["loss"], 1) in writer.scalars and ("train/aux", 0.5, 1) in writer.scalars
    assert ("train/lr", 0.1, 1) in writer.scalars
    assert end["event"] == "epoch_end" and ("epoch/loss", end["loss"], 3) in writer.scalars
    assert not [c for c in writer.scalars if c[0].endswith(("/epoch", "/step", "/global_step", "/stage"))]


def test_a_resumed_run_purges_the_steps_after_its_checkpoint(tmp_path, fake_writer):
    with pytest.raises(RuntimeError, match="crash"):  # step 5 logged, checkpoint at step 4, crash in step 6
        _train(tmp_path, crash_at=6, save_every_steps=2)
    _train(tmp_path, save_every_steps=2)  # resumes at global step 4
    crashed, resumed = fake_writer.made
    assert crashed.closed and {step for _, _, step in crashed.scalars} == {1, 2, 3, 4, 5}
    assert resumed.purge_step == 5 and resumed.closed
    assert {step for _, _, step in resumed.scalars} == {5, 6}
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [line["global_step"] for line in lines] == [1, 2, 3, 3, 4, 5, 6, 6]
    assert resumed.scalars == _expected([line for line in lines if line["global_step"] >= 5])


def test_without_the_option_no_writer_is_made(tmp_path, monkeypatch):
    def refuse():
        raise AssertionError("no writer without --tensorboard")

    monkeypatch.setattr(tensorboard, "_summary_writer", refuse)
    _train(tmp_path, tensorboard=False, epochs=1)
    assert not (tmp_path / "tensorboard").exists()


def test_a_test_step_logs_its_numbers_and_its_picture(tmp_path, fake_writer):
    picture = np.zeros((2, 3, 3), np.uint8)
    picture[0, 0] = (0, 0, 255)  # BGR: red
    picture[1, 2] = (255, 0, 0)  # BGR: blue
    cv2.imwrite(str(tmp_path / "grid.png"), picture)
    results = {"spol": {"top1_loc": 40.0, "gt_known_loc": 80.0, "threshold_source": "text"},
               "wsol": {"maxboxacc": 60.0, "curve": [[0.0, 1.0]]}}
    args = argparse.Namespace(output_dir=str(tmp_path), tensorboard=True)
    tensorboard.log_test_step(args, DistContext(), results,
                              {"test/spol/grid": tmp_path / "grid.png", "test/wsol/grid": tmp_path / "absent.png"})
    [writer] = fake_writer.made
    assert writer.log_dir == str(tmp_path / "tensorboard") and writer.closed
    assert writer.scalars == [("test/spol/top1_loc", 40.0, 0), ("test/spol/gt_known_loc", 80.0, 0),
                              ("test/wsol/maxboxacc", 60.0, 0)]
    [(tag, image, step, dataformats)] = writer.images
    assert (tag, step, dataformats, image.shape) == ("test/spol/grid", 0, "HWC", (2, 3, 3))
    assert image[0, 0].tolist() == [255, 0, 0] and image[1, 2].tolist() == [0, 0, 255]  # RGB
    tensorboard.log_test_step(argparse.Namespace(output_dir=str(tmp_path), tensorboard=False), DistContext(), results)
    assert len(fake_writer.made) == 1


def test_without_tensorboard_installed_the_option_is_refused(monkeypatch):
    monkeypatch.setattr("utils.ranges.tensorboard_missing", lambda: True)
    with pytest.raises(DataError, match="the tensorboard package is not installed"):
        check_options(argparse.Namespace(tensorboard=True))
    check_options(argparse.Namespace(tensorboard=False))
    # the package found but unusable by torch: its import error, on one line
    monkeypatch.setattr(tensorboard, "tensorboard_missing", lambda: False)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(DataError, match=r"^--tensorboard: .*torch\.utils\.tensorboard"):
        tensorboard._summary_writer()


@pytest.mark.parametrize("script", ["spol/cls/train.py", "sltnet/regressor/test.py"])
def test_the_option_without_tensorboard_is_one_error_line(script):
    code = ("import runpy, sys\n"
            "sys.modules['tensorboard'] = None  # as if not installed\n"
            f"sys.argv = [{script!r}, '--tensorboard', '--device', 'cpu']\n"
            f"runpy.run_path({script!r}, run_name='__main__')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == f"error: {TENSORBOARD_MISSING}", proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
