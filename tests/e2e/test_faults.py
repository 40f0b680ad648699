"""Faults provoked for real: each ends with one `error:` line (or one notice) and changes nothing
already written (the output folder's files are hashed before and after; `.lock` holds the PID of
the last run that took the folder and is left out)."""
import argparse
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from utils.engine import rundir
from utils.engine.checkpoint import load_checkpoint, load_state_dict_checked, save_checkpoint
from utils.engine.distributed import DistContext
from utils.engine.trainer import Trainer
from utils.errors import NoSpaceError, RunError

REPO = Path(__file__).resolve().parents[2]
TOY = REPO / "tests" / "toy_train.py"
sys.path.insert(0, str(REPO / "tests"))
import toy_train as toy  # noqa: E402


def tree_hash(folder) -> dict:
    """relative path -> sha256 of every file under ``folder`` (hidden ones too, but .lock)."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            if name == rundir.LOCK_NAME:
                continue
            path = Path(root) / name
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        e.pop(var, None)
    return e


def run(cmd, **kw):
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300, cwd=REPO, **kw)


def run_toy(out, *extra):
    return run([sys.executable, str(TOY), "--output-dir", str(out), "--device", "cpu", "--epochs", "1",
                "--samples", "6", *extra])


def error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error")]


def one_error(proc) -> str:
    lines = error_lines(proc)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[0]


def toy_cli(capsys, out, *extra) -> str:
    """tests/toy_train.py through utils.engine.rundir.run_cli in this process (no interpreter start):
    the one error line it prints before exiting with status 2."""
    from utils.engine.rundir import run_cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_cli(toy.main, toy.get_args_parser, "toy",
                ["--output-dir", str(out), "--device", "cpu", "--epochs", "1", "--samples", "6", *extra])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert info.value.code == 2 and len(err) == 1, err
    return err[0]


# ----------------------------------------------------------------------------- run identity
def test_another_run_in_the_folder_is_refused_and_overwrite_moves_it_aside(tmp_path, capsys):
    from utils.engine.rundir import run_cli

    out = tmp_path / "run"
    assert run_toy(out).returncode == 0
    before = tree_hash(out)
    line = toy_cli(capsys, out, "--lr", "0.05")
    assert "checkpoint.pth" in line and "--lr 0.5 there, 0.05 now" in line
    assert "--output-dir" in line and "--overwrite" in line
    assert tree_hash(out) == before  # args.yaml still claims the old settings, nothing retrained
    run_cli(toy.main, toy.get_args_parser, "toy", ["--output-dir", str(out), "--device", "cpu", "--epochs", "1",
                                                   "--samples", "6", "--lr", "0.05", "--overwrite"])
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and tree_hash(aside[0]) == before  # moved, never deleted
    assert load_checkpoint(out / "checkpoint.pth")["args"]["lr"] == 0.05
    # the same settings again resume (0 steps) instead of being refused
    run_cli(toy.main, toy.get_args_parser, "toy", ["--output-dir", str(out), "--device", "cpu", "--epochs", "1",
                                                   "--samples", "6", "--lr", "0.05"])
    assert "resumed toy from" in capsys.readouterr().out


def _cub_trainer(out, root, **kw):
    from utils.data.dataset import WSOLDataset
    from utils.data.layouts import load_records
    from utils.data.transforms import build_transform

    args = argparse.Namespace(output_dir=str(out), batch_size=2, epochs=1, workers=0, seed=0, amp="off",
                              deterministic=False, resume=True, log_every=0, save_every_steps=0,
                              max_steps_per_epoch=0, lr=0.1, data_root=str(root), layout="cub", **kw)
    dataset = WSOLDataset(load_records(root, "cub", "train"), build_transform("resize", resize=12))
    model = toy.ToyNet(0.0, classes=2)
    return Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), args, DistContext(), stage_name="t"), dataset


def _loss(net, batch):
    return torch.nn.functional.cross_entropy(net(batch["image"]), batch["label"]), {}


def test_another_dataset_is_refused_root_and_annotations(tiny_cub, tmp_path):
    import shutil

    out = tmp_path / "run"
    trainer, data = _cub_trainer(out, tiny_cub)
    trainer.fit(data, _loss)
    rundir.unlock_dir(out)
    before = tree_hash(out)
    copy = tmp_path / "other" / "CUB_200_2011"
    shutil.copytree(tiny_cub, copy)
    trainer, data = _cub_trainer(out, copy)
    with pytest.raises(RunError) as info:
        trainer.fit(data, _loss)
    assert f"--data-root {os.path.realpath(tiny_cub)!r} there, {os.path.realpath(copy)!r} now" in str(info.value)
    # same root, one box edited: the annotations' hash differs
    boxes = tiny_cub / "bounding_boxes.txt"
    lines = boxes.read_text().splitlines()
    lines[0] = lines[0].rsplit(" ", 1)[0] + " 7.0"
    boxes.write_text("\n".join(lines) + "\n")
    trainer, data = _cub_trainer(out, tiny_cub)
    with pytest.raises(RunError, match=r"dataset annotations \(hash\)") as info:
        trainer.fit(data, _loss)
    assert "\n" not in str(info.value) and "--overwrite" in str(info.value)
    assert tree_hash(out) == before
    rundir.unlock_dir(out)


# ----------------------------------------------------------------------------- lock
def test_a_second_run_into_a_busy_folder_stops_naming_the_first_pid(tmp_path):
    out, flag = tmp_path / "run", tmp_path / "paused"
    first = subprocess.Popen([sys.executable, str(TOY), "--output-dir", str(out), "--device", "cpu",
                              "--epochs", "1", "--samples", "6", "--pause-after-step", "1",
                              "--pause-file", str(flag)], env=env(), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not flag.exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.2)
        assert flag.exists()
        before = tree_hash(out)
        line = one_error(run_toy(out))
        assert f"in use by another run (PID {first.pid})" in line and str(out) in line
        assert tree_hash(out) == before
    finally:
        first.kill()
        first.wait()


# ----------------------------------------------------------------------------- resume faults
def test_resume_faults_other_stage_unmappable_batch_nan(tmp_path, capsys):
    # another stage's checkpoint in the folder
    other = tmp_path / "other"
    model = toy.ToyNet(0.0)
    args = argparse.Namespace(output_dir=str(other), batch_size=2, epochs=1, workers=0, seed=0, amp="off",
                              deterministic=False, resume=True, log_every=0, save_every_steps=0,
                              max_steps_per_epoch=0, lr=0.1)
    Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), args, DistContext(), stage_name="seg").save()
    before = tree_hash(other)
    assert "checkpoint of stage 'seg'" in toy_cli(capsys, other)
    assert tree_hash(other) == before
    # killed mid-epoch after 1 step of 4 images: batch size 3 cannot continue from image 4
    cut = tmp_path / "cut"
    killed = run_toy(cut, "--samples", "12", "--batch-size", "4", "--save-every-steps", "1",
                     "--kill-after-step", "1")
    assert killed.returncode == -signal.SIGKILL
    before = tree_hash(cut)
    line = one_error(run_toy(cut, "--samples", "12", "--batch-size", "3", "--save-every-steps", "1"))
    assert "checkpoint.pth: saved mid-epoch after 4 samples" in line and "needs a multiple of 3" in line
    assert tree_hash(cut) == before
    # a NaN loss: epoch, step, --lr; the last checkpoint stays
    nan = tmp_path / "nan"
    line = toy_cli(capsys, nan, "--samples", "12", "--batch-size", "2", "--save-every-steps", "1",
                   "--nan-after-step", "2")
    assert "the loss is nan at epoch 0 step 2" in line and "lower --lr (now 0.5)" in line
    assert load_checkpoint(nan / "checkpoint.pth")["global_step"] == 2
    bf16 = toy_cli(capsys, tmp_path / "nan16", "--amp", "bf16", "--nan-after-step", "0")
    assert "step 0" in bf16 and "--amp off" in bf16


# ----------------------------------------------------------------------------- saving
def _dev_full(monkeypatch):
    """Every temporary file utils.io creates writes to /dev/full: a real ENOSPC from the kernel."""
    real = tempfile.mkstemp

    def mkstemp(*a, **kw):
        fd, path = real(*a, **kw)
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, fd)
        os.close(full)
        return fd, path

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_while_saving_names_the_file_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    model = toy.ToyNet(0.0)
    args = argparse.Namespace(output_dir=str(tmp_path), batch_size=2, epochs=1, workers=0, seed=0, amp="off",
                              deterministic=False, resume=True, log_every=0, save_every_steps=0,
                              max_steps_per_epoch=0, lr=0.1)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), args, DistContext(), stage_name="t")
    trainer.fit(toy.ToyDataset(4), lambda net, b: (torch.nn.functional.cross_entropy(net(b["image"]),
                                                                                    b["label"]), {}))
    rundir.unlock_dir(tmp_path)
    before = tree_hash(tmp_path)
    _dev_full(monkeypatch)
    trainer.global_step += 1
    with pytest.raises(NoSpaceError) as info:
        trainer.save()
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'checkpoint.pth'}: no space left") and "\n" not in message
    assert tree_hash(tmp_path) == before  # previous checkpoint intact, no temporary file left


def test_sigkill_during_a_save_leaves_a_temp_file_removed_at_the_next_start(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_toy(out).returncode == 0
    checkpoint = tree_hash(out)["checkpoint.pth"]
    code = ("import os, signal, torch\n"
            "from utils.engine.checkpoint import save_checkpoint\n"
            "def dying(obj, f, *a, **k):\n"
            "    f.write(b'partial'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
            "torch.save = dying\n"
            f"save_checkpoint({str(out / 'checkpoint.pth')!r}, {{'x': torch.zeros(3)}})\n")
    killed = run([sys.executable, "-c", code])
    assert killed.returncode == -signal.SIGKILL
    stale = [p.name for p in out.iterdir() if p.name.startswith(".checkpoint.pth.") and p.name.endswith(".tmp")]
    assert len(stale) == 1
    from utils.engine.rundir import run_cli

    capsys.readouterr()
    run_cli(toy.main, toy.get_args_parser, "toy", ["--output-dir", str(out), "--device", "cpu", "--epochs", "1",
                                                   "--samples", "6"])
    assert "removed 1 temporary file(s)" in capsys.readouterr().err
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert tree_hash(out)["checkpoint.pth"] == checkpoint


# ----------------------------------------------------------------------------- torchrun
def test_torchrun_bad_input_prints_the_line_once_and_fails(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 1\nlearning_rate: 0.1\n")
    proc = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                str(TOY), "--output-dir", str(tmp_path / "out"), "--device", "cpu", "--config", str(bad)])
    assert proc.returncode != 0
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if "unknown key 'learning_rate'" in line]
    assert lines == [f"error: {bad}:2: unknown key 'learning_rate': the 'toy' stage has no option "
                     "--learning-rate"], proc.stderr[-3000:]


# ----------------------------------------------------------------------------- loading
def test_fp16_checkpoint_loads_with_one_notice(tmp_path, capsys):
    model = toy.ToyNet(0.0)
    half = {k: v.half() for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "half.pth", half)
    fresh = toy.ToyNet(0.0)
    load_state_dict_checked(fresh, load_checkpoint(tmp_path / "half.pth"), source=str(tmp_path / "half.pth"))
    err = capsys.readouterr().err.splitlines()
    assert err == [f"notice: {tmp_path / 'half.pth'}: 4 float16 tensors loaded as float32"]
    assert all(v.dtype == torch.float32 for v in fresh.state_dict().values())
    torch.testing.assert_close(fresh.fc.weight, half["fc.weight"].float())


# ----------------------------------------------------------------------------- CLIs
def test_evaluate_cli_missing_root_map_prediction(tiny_cub, tmp_path, capsys):
    import numpy as np

    from utils.evaluation.evaluate import cli

    maps = tmp_path / "maps"
    maps.mkdir()
    result = tmp_path / "res.json"
    common = ["--layout", "cub", "--split", "test", "--protocol", "wsol", "--input-size", "32",
              "--output", str(result)]
    # the real entry point once, then its function in-process (faster)
    line = one_error(run([sys.executable, "-m", "utils.evaluation", *common, "--data-root", str(tmp_path / "nowhere"),
                          "--scoremaps", str(maps)]))
    assert f"{tmp_path / 'nowhere'}: --data-root: folder not found" in line

    def in_process(*extra):
        with pytest.raises(SystemExit) as info:
            cli([*common, "--data-root", str(tiny_cub), "--scoremaps", str(maps), *extra])
        assert info.value.code == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
        return err[0]

    assert "Red_0002.npy: score map not found" in in_process()
    for name in ("001.Red_bird/Red_0002", "002.Blue_bird/Blue_0002"):
        (maps / name).parent.mkdir(exist_ok=True)
        np.save(maps / f"{name}.npy", np.zeros((32, 32), dtype=np.float32))
    line = in_process("--predictions", str(tmp_path / "none.csv"))
    assert "none.csv: --predictions: file not found" in line
    assert not result.exists()


def test_generate_cli_existing_folder_and_zero_classes(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's file")
    before = tree_hash(mine)
    line = one_error(run([sys.executable, "-m", "utils.data.generate", "--out", str(mine), "--classes", "1",
                          "--train-per-class", "1", "--test-per-class", "1", "--size", "16"]))
    assert f"{mine}: exists and is not empty" in line
    line = one_error(run([sys.executable, "-m", "utils.data.generate", "--out", str(tmp_path / "new"),
                          "--classes", "0"]))
    assert "argument --classes: must be an integer in [1, 200], got '0'" in line and not (tmp_path / "new").exists()
    assert tree_hash(mine) == before


def test_demo_data_out_refuses_a_folder_it_did_not_generate(tmp_path):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"not really a photo")
    before = tree_hash(mine)
    line = one_error(run([sys.executable, "demo.py", "--tiny", "--device", "cpu", "--data-out", str(mine),
                          "--output-dir", str(tmp_path / "out")]))
    assert f"{mine}: exists and was not generated by utils.data.generate" in line
    assert tree_hash(mine) == before and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- test steps
def test_a_failed_test_step_keeps_the_previous_results_and_a_worker_error_is_the_same_line(tiny_cub, tmp_path,
                                                                                            capsys):
    from spol.model import CAMModel

    out = tmp_path / "cam"
    torch.manual_seed(0)
    save_checkpoint(out / "model.pth", CAMModel(2, pretrained="none").state_dict())
    from spol.cam import test as cam_test
    from utils.engine.rundir import run_cli

    argv = ["--data-root", str(tiny_cub), "--output-dir", str(out), "--device", "cpu", "--resize-size", "32",
            "--batch-size", "1", "--mask-workers", "1"]
    run_cli(cam_test.main, cam_test.get_args_parser, "cam_test", argv + ["--workers", "0"])
    before = tree_hash(out)
    assert "pseudo_masks.json" in before and "test_args.yaml" in before
    # a real corrupt JPEG: the second training image cut in its scan data (the header still reads)
    image = tiny_cub / "images" / "002.Blue_bird" / "Blue_0001.jpg"
    data = image.read_bytes()
    image.write_bytes(data[:data.find(b"\xff\xda") + 40])
    lines = []
    for workers in ("0", "1"):  # in-process, then as a user runs it
        if workers == "0":
            capsys.readouterr()
            with pytest.raises(SystemExit):
                run_cli(cam_test.main, cam_test.get_args_parser, "cam_test", argv + ["--workers", "0", "--seed", "7"])
            lines.append([x for x in capsys.readouterr().err.splitlines() if x.startswith("error")][-1])
        else:
            lines.append(one_error(run([sys.executable, "spol/cam/test.py", *argv, "--workers", workers,
                                        "--seed", "7"])))  # the new test_args.yaml would differ
        assert tree_hash(out) == before
        assert not [p for p in out.iterdir() if p.name.startswith(rundir.PREVIOUS_PREFIX)]
    assert lines[0] == lines[1] and f"{image}: unreadable or corrupt image" in lines[0], lines


def test_an_interrupted_test_steps_outputs_come_back_at_the_next_start(tmp_path):
    out = tmp_path / "stage"
    (out / "pseudo_masks").mkdir(parents=True)
    (out / "pseudo_masks" / "a.png").write_bytes(b"old mask")
    (out / "pseudo_masks.json").write_text("{}")
    before = tree_hash(out)
    code = ("import os, signal, sys\n"
            "from pathlib import Path\n"
            "from utils.engine.rundir import protect_outputs\n"
            f"out = Path({str(out)!r})\n"
            "protect_outputs(out, ['pseudo_masks', 'pseudo_masks.json', 'test_args.yaml'])\n"
            "(out / 'pseudo_masks').mkdir(); (out / 'pseudo_masks' / 'b.png').write_bytes(b'half')\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    assert run([sys.executable, "-c", code]).returncode == -signal.SIGKILL
    assert tree_hash(out) != before  # the killed step's partial folder is there, the old one aside
    rundir.recover_interrupted(out)
    assert tree_hash(out) == before


def test_a_test_step_reads_the_backbone_of_its_training_run(tmp_path, capsys):
    import yaml

    from sltnet.localizer import test as loc_test
    from sltnet.options import LOCALIZER_TEST_INHERITS, REGRESSOR_TEST_INHERITS
    from utils.config import parse_args
    from utils.engine.stage import inherit_training_options, start_run

    train_dir = tmp_path / "loc"
    train_dir.mkdir()
    (train_dir / "args.yaml").write_text(yaml.safe_dump({"backbone": "resnet50", "cam_feature": "layer2",
                                                         "share_backbone": True, "input_size": 64}))
    args = parse_args(loc_test.get_args_parser(), ["--localizer-dir", str(train_dir)], stage="localizer_test")
    changed = inherit_training_options(args, LOCALIZER_TEST_INHERITS)
    assert (args.backbone, args.cam_feature, args.share_backbone, args.input_size) == ("resnet50", "layer2",
                                                                                        True, 64)
    assert "--backbone resnet50" in changed
    assert capsys.readouterr().err.startswith("notice: --backbone resnet50")
    # through the frame of every stage script's main (utils.engine.stage.start_run): refused before
    # anything is written
    args = parse_args(loc_test.get_args_parser(), ["--localizer-dir", str(train_dir), "--backbone", "vgg16",
                                                   "--output-dir", str(tmp_path / "test")], stage="localizer_test")
    with pytest.raises(RunError, match=r"args\.yaml: the training run used --backbone resnet50, this test step "
                                       r"was given --backbone vgg16"):
        with start_run(args, inherit=LOCALIZER_TEST_INHERITS, outputs=()):
            pass
    assert not (tmp_path / "test").exists()
    # the regressor's test step reads its source stage's folder (here the localizer's)
    from sltnet.regressor import test as reg_test

    args = parse_args(reg_test.get_args_parser(), ["--localizer-dir", str(train_dir), "--regressor-source",
                                                   "localizer", "--output-dir", str(tmp_path / "reg")],
                      stage="regressor_test")
    for spec in REGRESSOR_TEST_INHERITS:
        inherit_training_options(args, spec)
    assert (args.backbone, args.cam_feature, args.share_backbone) == ("resnet50", "layer2", True)


@pytest.mark.parametrize("stage,module", [("cls_test", "spol.cls.test"), ("cam_test", "spol.cam.test"),
                                          ("seg_test", "spol.seg.test")])
def test_spol_test_steps_read_the_geometry_of_their_training_run(tmp_path, capsys, stage, module):
    """A SPOL test step takes the training run's backbone and input geometry (in its folder) when not
    given; a geometry given wins without an error."""
    import importlib

    import yaml

    from utils.config import parse_args
    from utils.engine.stage import inherit_training_options

    run = tmp_path / "run"
    run.mkdir()
    (run / "args.yaml").write_text(yaml.safe_dump({"backbone": "resnet50", "resize_size": 72, "input_size": 64,
                                                   "dataset": "cub"}))
    from spol import options

    script = importlib.import_module(module)
    spec = getattr(options, f"{stage.split('_')[0].upper()}_TEST_INHERITS")  # declared beside its parser
    args = parse_args(script.get_args_parser(), ["--output-dir", str(run)], stage=stage)
    inherit_training_options(args, spec)
    assert args.resize_size == 72
    if stage == "seg_test":
        assert args.input_size == 64
    if stage == "cls_test":  # tested on the whole resized image: the training crop is not taken
        assert (args.backbone, args.input_size) == ("resnet50", None)
    err = capsys.readouterr().err
    assert "--resize-size 72" in err and f"read from {run / 'args.yaml'}" in err
    # an explicit value wins over the training run's geometry (soft), without an error
    args = parse_args(script.get_args_parser(), ["--output-dir", str(run), "--resize-size", "80"], stage=stage)
    inherit_training_options(args, spec)
    assert args.resize_size == 80


def test_under_torchrun_another_rank_reports_only_a_fault_of_its_own(monkeypatch, capsys, tmp_path):
    from utils.config import report_error

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "t1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("WSOL_ERROR_WAIT", "0.5")
    monkeypatch.setenv("RANK", "1")
    report_error(RunError("x.jpg: only rank 1 read this"))  # rank 0 reported nothing
    assert capsys.readouterr().err == "error (rank 1): x.jpg: only rank 1 read this\n"
    monkeypatch.setenv("RANK", "0")
    report_error(RunError("a.yaml:2: bad"))
    assert capsys.readouterr().err == "error: a.yaml:2: bad\n"
    monkeypatch.setenv("RANK", "1")
    report_error(RunError("a.yaml:2: bad"))  # the same fault: rank 0 said it already
    assert capsys.readouterr().err == ""
