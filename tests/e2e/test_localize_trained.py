"""``python -m localize`` on runs trained by the stage scripts (tiny generated data, CPU): on the dataset's
own images it gives the boxes, maps and classes of each method's test step, mapped back to the
original pixels (SPOL seg with the spol geometry, SLT-Net's label-free top-K ACAM map, SLT-Net final
with its joint and its standalone regressor); a plain CAM run; the README's example; a released SPOL
seg state dict's keys and shapes; the real entry point's exit status; and two processes under
torchrun equal to one."""
import csv
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from localize.cli import main as localize_main
from localize.options import get_args_parser
from utils.config import parse_args
from utils.data.generate import generate_dataset
from utils.data.layouts import load_records
from utils.evaluation.handoff import read_boxes_csv, read_predictions
from utils.evaluation.protocol import get_protocol
from utils.paths import REPO_ROOT

SIZE = ["--resize-size", "72", "--input-size", "64"]


def stage(module, name, argv):
    script = importlib.import_module(module)
    return script.main(parse_args(script.get_args_parser(), [str(a) for a in argv], stage=name))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Every run, trained for a step or two, with the test steps the comparisons read; in the project's
    output layout under ``root/output``."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("localize")
    data = generate_dataset(root / "birds", num_classes=3, train_per_class=3, test_per_class=2, image_size=48,
                            seed=0, object_scale=(0.9, 1.0))
    base = ["--data-root", data, "--device", "cpu", "--workers", "0", *SIZE]
    spol = root / "output" / "spol" / "cub"
    stage("spol.cam.train", "cam_train", [*base, "--output-dir", spol / "cam", "--backbone", "resnet18",
                                          "--pretrained", "none", "--epochs", "1", "--batch-size", "4"])
    stage("spol.cam.test", "cam_test", ["--data-root", data, "--device", "cpu", "--workers", "0",
                                        "--resize-size", "72", "--output-dir", spol / "cam", "--batch-size", "4"])
    stage("spol.seg.train", "seg_train", [*base, "--output-dir", spol / "seg", "--backbone", "resnet18",
                                          "--mask-dir", spol / "cam" / "pseudo_masks", "--pretrained", "none",
                                          "--epochs", "1", "--batch-size", "4"])
    stage("spol.cls.train", "cls_train", [*base, "--output-dir", spol / "cls", "--backbone", "resnet18",
                                          "--pretrained", "none", "--epochs", "1", "--batch-size", "4"])
    stage("spol.cls.test", "cls_test", ["--data-root", data, "--device", "cpu", "--workers", "0",
                                        "--output-dir", spol / "cls", "--resize-size", "72", "--batch-size", "4"])
    stage("spol.seg.test", "seg_test", [*base, "--output-dir", spol / "seg", "--cls-dir", spol / "cls",
                                        "--protocol", "spol", "--batch-size", "4"])
    sltnet = root / "output" / "sltnet" / "birds" / "resnet18"
    common = [*base, "--pretrained", "none", "--batch-size", "3", "--dataset", "birds", "--backbone", "resnet18"]
    dirs = ["--localizer-dir", sltnet / "localizer", "--regressor-dir", sltnet / "regressor",
            "--classifier-dir", sltnet / "classifier"]
    stage("sltnet.localizer.train", "localizer_train", [*common, "--output-dir", sltnet / "localizer",
                                                        "--output-stride", "8", "--top-k", "2", "--epochs", "1",
                                                        "--max-steps-per-epoch", "2"])
    for split in ("test", "train"):
        stage("sltnet.localizer.test", "localizer_test", [*common, "--localizer-dir", sltnet / "localizer",
                                                          "--top-k", "2", "--split", split, "--no-maxboxacc"])
    stage("sltnet.regressor.train", "regressor_train", [*common, *dirs[:2], "--output-dir", sltnet / "regressor",
                                                        "--output-stride", "8", "--epochs", "1",
                                                        "--max-steps-per-epoch", "1"])
    stage("sltnet.classifier.train", "classifier_train", [*common, "--output-dir", sltnet / "classifier",
                                                          "--epochs", "1", "--max-steps-per-epoch", "1"])
    stage("sltnet.classifier.test", "classifier_test", [*common, "--classifier-dir", sltnet / "classifier"])
    stage("sltnet.regressor.test", "regressor_test", [*common, *dirs])   # the joint regressor (Fig. 2a)
    stage("sltnet.regressor.test", "regressor_test", [*common, *dirs, "--regressor-source", "regressor",
                                                      "--output-dir", sltnet / "regressor" / "standalone"])
    plain = root / "output" / "cam" / "localizer"
    stage("sltnet.localizer.train", "localizer_train", [*common, "--output-dir", plain, "--output-stride", "8",
                                                        "--no-smt", "--no-acam", "--no-vst", "--epochs", "1",
                                                        "--max-steps-per-epoch", "2"])
    return {"root": root, "data": data, "seg": spol / "seg", "cls": spol / "cls", "localizer": sltnet / "localizer",
            "regressor": sltnet / "regressor", "classifier": sltnet / "classifier", "plain_cam": plain}


def localize(*argv):
    args = get_args_parser().parse_args([str(a) for a in argv] + ["--device", "cpu", "--workers", "0"])
    return localize_main(args)


def boxes_of(path) -> dict:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["image"]: r for r in rows}


def test_spol_gives_its_test_steps_maps_boxes_and_classes(trained, tmp_path):
    records = load_records(trained["data"], "cub", "test")
    out = tmp_path / "out"
    result = localize("--run", trained["seg"], "--protocol", "spol", "--images", trained["data"] / "images",
                      "--out", out, "--batch-size", 5)
    assert len(result) == 15 and not result.skipped
    tested, _ = read_boxes_csv(trained["seg"] / "spol" / "boxes.csv")
    geometry = get_protocol("spol", 64, 72)
    mine = boxes_of(out / "boxes.csv")
    predictions = read_predictions(trained["cls"] / "predictions.csv")
    for r in records:
        expected = geometry.to_image_box(tested[r.image_id], r.size)
        assert [float(mine[r.image_id][k]) for k in ("x0", "y0", "x1", "y1")] == pytest.approx(expected, abs=0.006)
        np.testing.assert_allclose(np.load(out / "maps" / f"{r.image_id}.npy"),
                                   np.load(trained["seg"] / "spol" / "scoremaps" / (r.image_id[:-4] + ".npy")),
                                   atol=1e-5)
        assert int(mine[r.image_id]["class"]) == predictions[r.image_id].top5[0]   # spol/cls/test.py's top-1


def test_sltnet_map_gives_its_test_steps_boxes(trained, tmp_path):
    records = load_records(trained["data"], "cub", "test")
    out = tmp_path / "out"
    localize("--run", trained["localizer"], "--images", trained["data"] / "images", "--out", out)
    tested, meta = read_boxes_csv(trained["localizer"] / "test" / "boxes.csv")
    assert meta["map"] == "top-2 ACAM"                     # label-free: the map localize computes
    mine = boxes_of(out / "boxes.csv")
    for r in records:
        expected = get_protocol("wsol", 64).to_image_box(tested[r.image_id], r.size)
        assert [float(mine[r.image_id][k]) for k in ("x0", "y0", "x1", "y1")] == pytest.approx(expected, abs=0.006)
        np.testing.assert_allclose(np.load(out / "maps" / f"{r.image_id}.npy"),
                                   np.load(trained["localizer"] / "test" / "scoremaps" / (r.image_id[:-4] + ".npy")),
                                   atol=1e-5)


@pytest.mark.parametrize("run,kind,tested", [("regressor", [], "standalone"),
                                             ("localizer", ["--kind", "sltnet-final"], "test")])
def test_sltnet_final_gives_its_test_steps_boxes_and_classes(trained, tmp_path, run, kind, tested):
    records = load_records(trained["data"], "cub", "test")
    out = tmp_path / "out"
    localize("--run", trained[run], *kind, "--images", trained["data"] / "images", "--out", out)
    expected_boxes, _ = read_boxes_csv(trained["regressor"] / tested / "boxes.csv", allow_inverted=True)
    predictions = read_predictions(trained["classifier"] / "test" / "predictions.csv")   # ten crops
    mine = boxes_of(out / "boxes.csv")
    for r in records:
        expected = get_protocol("wsol", 64).to_image_box(expected_boxes[r.image_id], r.size)
        assert [float(mine[r.image_id][k]) for k in ("x0", "y0", "x1", "y1")] == pytest.approx(expected, abs=0.006)
        assert int(mine[r.image_id]["class"]) == predictions[r.image_id].top5[0]
    assert not (out / "maps").exists()


def test_a_plain_cam_run_localizes_with_the_predicted_class_cam(trained, tmp_path, capsys):
    result = localize("--run", trained["plain_cam"], "--images", trained["data"] / "images", "--out", tmp_path / "o")
    said = capsys.readouterr().out
    assert "kind cam, SLT-Net localizer (resnet18), the predicted class's CAM" in said
    assert "localize: threshold 0.2: the run's box_threshold" in said
    assert len(result) == 15 and result.maps is None   # the command keeps them in maps/, not in memory
    assert {np.load(p).shape for p in (tmp_path / "o" / "maps").rglob("*.npy")} == {(64, 64)}
    assert set(result.class_names) <= {n.split(" ", 1)[1] for n in
                                       (trained["data"] / "classes.txt").read_text().splitlines()}


# ----------------------------------------------------------------------------- the README's example
def readme_example() -> str:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "load_localizer" in b]
    assert len(blocks) == 1, "README.md must hold one python block that calls load_localizer"
    return blocks[0]


def test_the_readme_example_runs_as_written(trained, tmp_path, monkeypatch, capsys):
    here = tmp_path / "here"
    shutil.copytree(trained["root"] / "output" / "spol", here / "output" / "spol")
    photo = np.asarray(Image.open(next((trained["data"] / "images").rglob("*.jpg"))).convert("RGB"))
    Image.fromarray(photo).save(here / "photo.jpg")
    Image.fromarray(photo[:, ::-1]).resize((60, 40)).save(here / "photo.png")
    monkeypatch.chdir(here)
    scope = {}
    exec(compile(readme_example(), "README.md", "exec"), scope)
    lines = capsys.readouterr().out.splitlines()
    result = scope["result"]
    assert result.names == ["photo.jpg", "image_1", "image_2"]
    assert result.sizes == [photo.shape[1::-1], (60, 40), (320, 240)]
    assert [line.split(" [")[0] for line in lines[:3]] == result.names
    assert lines[3] == f"(64, 64) {result.classes} {result.class_names}" and len(result.class_names) == 3


# ----------------------------------------------------------------------------- released weights, the real command
def test_a_state_dict_with_the_released_keys_and_shapes_loads(tmp_path, capsys):
    """The keys and shapes of the SPOL authors' CUB seg file (spol/reference), random values, fp16 in part."""
    shapes = json.loads((REPO_ROOT / "spol" / "reference" / "released_state_dict_shapes.json").read_text())["cub200-seg"]
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.tensor(7) if k.endswith("num_batches_tracked") else
             (torch.rand(shape, generator=gen) + 0.5).half() for k, shape in shapes.items()}
    torch.save(state, tmp_path / "released.pth")
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (90, 60), (120, 80, 40)).save(images / "a.jpg")
    result = localize("--checkpoint", tmp_path / "released.pth", "--backbone", "resnet50", "--dataset", "cub",
                      "--input-size", "64", "--images", images, "--out", tmp_path / "o")
    assert len(result) == 1 and np.load(tmp_path / "o" / "maps" / "a.jpg.npy").shape == (64, 64)
    assert "tensors loaded as float32" in capsys.readouterr().err


def test_the_command_exits_0_with_a_skipped_image_and_2_without_any(trained, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(next((trained["data"] / "images").rglob("*.jpg")), images / "bird.jpg")
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "localize", "--run", str(trained["seg"]), "--images", str(images), "--device", "cpu"]
    ok = subprocess.run([*cmd, "--out", str(tmp_path / "o")], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                        timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "localize: 1 of 2 images localized, 1 skipped" in ok.stdout and "Traceback" not in ok.stderr
    assert [line for line in ok.stderr.splitlines() if "warning:" in line][0].endswith(
        f"warning: {images / 'broken.jpg'}: unreadable or corrupt image: cannot identify image file "
        f"'{images / 'broken.jpg'}' (skipped)")
    (images / "bird.jpg").unlink()
    failed = subprocess.run([*cmd, "--out", str(tmp_path / "p")], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.splitlines()[-1] == f"error: {images}: none of its 1 images could be read (each named " \
                                             f"above): nothing was written in {tmp_path / 'p'}"
    assert not (tmp_path / "p").exists()


def test_two_processes_under_torchrun_write_what_one_writes(trained, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    argv = ["--run", str(trained["seg"]), "--images", str(trained["data"] / "images"), "--device", "cpu",
            "--workers", "0", "--batch-size", "4"]
    one = subprocess.run([sys.executable, "-m", "localize", *argv, "--out", str(tmp_path / "one")], cwd=REPO_ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    # "--": torchrun would take --run for an abbreviation of its --run-path (README)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "localize", "--", *argv, "--out", str(tmp_path / "two")], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("localize: 15 of 15 images localized") == 1   # rank 0 speaks
    assert (tmp_path / "one" / "boxes.csv").read_text() == (tmp_path / "two" / "boxes.csv").read_text()
    for path in (tmp_path / "one" / "maps").rglob("*.npy"):
        np.testing.assert_allclose(np.load(tmp_path / "two" / path.relative_to(tmp_path / "one")), np.load(path),
                                   atol=1e-6)
    first, second = (json.loads((tmp_path / d / "predictions.json").read_text()) for d in ("one", "two"))
    assert (first["processes"], second["processes"]) == (1, 2) and first["outputs"] == second["outputs"]
