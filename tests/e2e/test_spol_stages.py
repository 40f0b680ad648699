"""Every SPOL stage end to end on tiny generated data, on the CPU, each consuming the previous
stage's files: cam train -> cam test (pseudo masks) -> seg train; cls train -> cls test
(predictions.csv) -> seg test (metrics, boxes, score maps, grid). Missing upstream files give one
clear error naming the stage to run first."""
import csv
import json
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import spol
from spol.cam import test as cam_test, train as cam_train
from spol.cls import test as cls_test, train as cls_train
from spol.model import CAMModel, SegModel
from utils.engine.checkpoint import load_stage_weights
from spol.pseudo_mask import pseudo_mask_image
from spol.seg import test as seg_test, train as seg_train
from utils.config import parse_args
from utils.data.dataset import WSOLDataset
from utils.data.layouts import load_records
from utils.data.transforms import build_spol_transform
from utils.evaluation.protocol import get_protocol
from utils.evaluation.evaluate import evaluate_boxes
from utils.data.generate import generate_dataset
from utils.evaluation.metrics import LocalizationMeter, spol_iou
from utils.evaluation.handoff import read_predictions

SPOL_DIR = Path(spol.__file__).resolve().parent
TINY = ["--device", "cpu", "--workers", "0", "--resize-size", "72", "--input-size", "64"]


def run(module, stage, argv):
    return module.main(parse_args(module.get_args_parser(), [str(a) for a in argv], stage=stage))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("spol") / "birds"
    generate_dataset(root, num_classes=3, train_per_class=3, test_per_class=2, image_size=48, seed=0,
                     object_scale=(0.9, 1.0))  # large birds: the whole-image box hits some of them
    return root


@pytest.fixture(scope="module")
def cam_dir(data):
    out = data.parent / "out" / "cam"
    base = ["--data-root", data, "--output-dir", out]
    # 9 images, batch 4: the last batch would hold 1 image and is dropped (gating BatchNorms)
    run(cam_train, "cam_train", base + TINY + ["--pretrained", "none", "--epochs", "1", "--batch-size", "4"])
    run(cam_test, "cam_test", ["--data-root", data, "--output-dir", out, "--device", "cpu", "--workers", "0",
                               "--resize-size", "72", "--batch-size", "4"])
    return out


@pytest.fixture(scope="module")
def seg_dir(data, cam_dir):
    out = data.parent / "out" / "seg"
    run(seg_train, "seg_train", ["--data-root", data, "--output-dir", out, "--mask-dir", cam_dir / "pseudo_masks",
                                 "--pretrained", "none", "--epochs", "1", "--batch-size", "4"] + TINY)
    return out


@pytest.fixture(scope="module")
def cls_dir(data):
    out = data.parent / "out" / "cls"
    common = ["--data-root", data, "--output-dir", out, "--backbone", "resnet50"] + TINY
    run(cls_train, "cls_train", common + ["--pretrained", "none", "--epochs", "1", "--batch-size", "4"])
    run(cls_test, "cls_test", common + ["--batch-size", "4"])
    return out


def test_cam_stage_writes_one_lossless_pseudo_mask_per_training_image(data, cam_dir):
    assert (cam_dir / "model.pth").is_file() and (cam_dir / "log.jsonl").is_file()
    train = load_records(data, "cub", "train")
    # recompute every mask from the saved model, one image at a time: the PNG holds exactly it
    model = load_stage_weights(CAMModel(3, pretrained="none"), cam_dir / "model.pth", "spol/cam/train.py")
    loader = torch.utils.data.DataLoader(WSOLDataset(train, build_spol_transform("resize", resize=72)), batch_size=1)
    model.eval()
    for batch in loader:
        with torch.inference_mode():
            (index,), (cam,) = cam_test.normalized_cams(cam_test.cam_step(model, batch), 72)
        r = train[index]
        path = cam_dir / "pseudo_masks" / (str(Path(r.image_id).with_suffix("")) + ".png")
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert mask is not None and mask.shape == (r.size[1], r.size[0], 3)
        expected = pseudo_mask_image(cam, r.size)  # B, G, R as the authors' cv2.imwrite
        assert np.abs(mask.astype(int) - expected).max() <= 1  # batch 1 vs batched: float noise
        assert not mask[:, :, 2].any()          # R (cv2 order: BGR) is zero
    assert len(list((cam_dir / "pseudo_masks").rglob("*.png"))) == len(train)
    assert json.loads((cam_dir / "pseudo_masks.json").read_text())["channels"]["G"] == "Gaussian prior"
    assert len(list(data.rglob("*.png"))) == 15  # 15 GT segmentations, no pseudo mask written there


def test_seg_stage_trains_on_pseudo_masks(seg_dir):
    assert (seg_dir / "model.pth").is_file()
    log = [json.loads(line) for line in (seg_dir / "log.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "epoch_end" and np.isfinite(log[-1]["loss"])


def test_cls_stage_writes_predictions(data, cls_dir):
    rows = list(csv.reader(open(cls_dir / "predictions.csv")))
    assert rows[0] == ["image_id", "label", "pred_top5", "top1_correct", "top5_correct"]
    assert sorted(r[0] for r in rows[1:]) == sorted(r.image_id for r in load_records(data, "cub", "test"))
    assert all(len(r[2].split()) == 3 for r in rows[1:])  # 3 classes: top-3


def test_seg_test_reports_both_protocols_and_rescores_identically(data, seg_dir, cls_dir):
    run(seg_test, "seg_test", ["--data-root", data, "--output-dir", seg_dir, "--cls-dir", cls_dir,
                               "--batch-size", "4", "--threshold-split", "train"] + TINY)
    summary = json.loads((seg_dir / "metrics.json").read_text())
    test = load_records(data, "cub", "test")
    for protocol in ["spol", "wsol"]:
        out = seg_dir / protocol
        results = json.loads((out / "metrics.json").read_text())
        assert results["num_images"] == len(test) == summary[protocol]["num_images"]
        for key in ("top1_loc", "top5_loc", "gt_known_loc", "maxboxacc_v2", "pxap"):
            assert 0 <= results[key] <= 100
        assert len(list((out / "scoremaps").rglob("*.npy"))) == len(test)
        boxes = list(csv.reader(open(out / "boxes.csv")))
        assert boxes[0] == ["image_id", "x0", "y0", "x1", "y1"] and len(boxes) == len(test) + 1
        # the boxes in boxes.csv are the ones scored: GT-known Loc recomputed from them agrees
        pred = {row[0]: np.array([float(v) for v in row[1:]]) for row in boxes[1:]}
        if get_protocol(protocol).needs_threshold:  # spol: [0, 0, 0, 0] = no contour, a miss (IoU 0)
            outcomes = get_protocol("center_crop", 64, 72).hits(
                [pred[r.image_id] for r in test], [get_protocol("center_crop", 64, 72).gt_boxes(r.boxes, r.size) for r in test])
            assert 100 * np.mean([o["hit"] for o in outcomes]) == pytest.approx(results["gt_known_loc"])
        else:
            meter = LocalizationMeter(0.5, ">=")
            meter.update([pred[r.image_id] for r in test],
                         [get_protocol("resize", 64).gt_boxes(r.boxes, r.size) for r in test])
            assert meter.compute()["gt_known_loc"] == results["gt_known_loc"]
        assert cv2.imread(str(out / "grid.png")) is not None
        # the maps were scored in memory; the command metrics.json gives re-scores the saved maps from
        # their folder (python -m utils.evaluation): every number and curve the same, the hit list too
        command = shlex.split(results["rescore_command"])
        assert command[:3] == ["python", "-m", "utils.evaluation"]
        proc = subprocess.run([sys.executable, *command[1:]], cwd=SPOL_DIR.parent, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        rescored = json.loads((out / "rescored.json").read_text())
        per_image = rescored.pop("per_image", None)
        assert rescored.pop("scoremaps") == str((out / "scoremaps").resolve())
        assert rescored.pop("threshold_source") == "fixed"  # given as --threshold; the seg test says whence
        assert rescored == {k: v for k, v in results.items() if k not in ("threshold_source", "rescore_command")}
        for key in ("top1_loc", "top5_loc", "gt_known_loc", "maxboxacc", "maxboxacc_v2", "pxap"):
            assert rescored[key] == summary[protocol][key]
        if per_image is not None:  # the SPOL protocols: hits.csv is the evaluator's hit list
            hits = list(csv.DictReader(open(out / "hits.csv")))
            assert [(h["image_id"], h["iou"], h["hit"], h["skipped"]) for h in hits] == [
                (o["image_id"], "" if o["iou"] is None else repr(o["iou"]), str(int(o["hit"])), o["skipped"] or "")
                for o in per_image]
        # and its boxes.csv (with boxes.json) scored as a box method's (--boxes): the same Loc
        by_boxes = evaluate_boxes(test, out / "boxes.csv", protocol, predictions=cls_dir / "predictions.csv",
                                  input_size=64, resize_size=72)
        for key in ("top1_loc", "top5_loc", "gt_known_loc"):
            assert by_boxes[key] == results[key]
    assert summary["spol"]["threshold_used"] == 0.2
    assert "held-out split 'train'" in summary["wsol"]["threshold_source"]
    assert summary["paper"]["top5_loc"] == 93.44


def test_wsol_threshold_on_test_split_is_said_so(data, seg_dir, cls_dir, tmp_path):
    run(seg_test, "seg_test", ["--data-root", data, "--output-dir", tmp_path, "--cls-dir", cls_dir,
                               "--checkpoint", seg_dir / "model.pth", "--protocol", "wsol",
                               "--batch-size", "4"] + TINY)
    results = json.loads((tmp_path / "wsol" / "metrics.json").read_text())
    assert "TEST split itself" in results["threshold_source"]
    assert not (tmp_path / "spol").exists()


def test_missing_upstream_files_name_the_stage_to_run_first(data, tmp_path, seg_dir):
    def error(module, stage, argv):
        with pytest.raises(FileNotFoundError) as info:
            run(module, stage, ["--data-root", data, "--device", "cpu", "--workers", "0"] + argv)
        assert "\n" not in str(info.value)
        return str(info.value)

    msg = error(seg_test, "seg_test", ["--output-dir", seg_dir, "--cls-dir", tmp_path / "nothing"])
    assert "predictions.csv" in msg and "run spol/cls/test.py first" in msg
    msg = error(seg_train, "seg_train", ["--output-dir", tmp_path / "s", "--mask-dir", tmp_path / "none"])
    assert "run spol/cam/test.py first" in msg
    msg = error(cam_test, "cam_test", ["--output-dir", tmp_path / "c"])
    assert "model.pth" in msg and "run spol/cam/train.py first" in msg
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "predictions.csv").write_text("image_id,label,pred_top5,top1_correct,top5_correct\n")
    msg = error(seg_test, "seg_test", ["--output-dir", tmp_path / "g", "--cls-dir", tmp_path / "cls"])
    assert "run spol/seg/train.py first" in msg
    msg = error(cls_test, "cls_test", ["--output-dir", tmp_path / "k", "--backbone", "resnet50"])
    assert "run spol/cls/train.py first" in msg


def test_a_pseudo_mask_missing_for_one_image_fails_before_training(data, cam_dir, tmp_path):
    import shutil

    masks = tmp_path / "masks"
    shutil.copytree(cam_dir / "pseudo_masks", masks)
    victim = sorted(masks.rglob("*.png"))[3]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match="run spol/cam/test.py first") as info:
        run(seg_train, "seg_train", ["--data-root", data, "--output-dir", tmp_path / "s", "--mask-dir", masks,
                                     "--pretrained", "none", "--batch-size", "4"] + TINY)
    assert victim.name in str(info.value)


def test_scripts_run_from_their_own_folder():
    proc = subprocess.run([sys.executable, "test.py", "--help"], cwd=SPOL_DIR / "seg", capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "--threshold-split" in proc.stdout, proc.stderr


def test_bad_input_ends_a_script_with_one_error_line(tmp_path):
    proc = subprocess.run([sys.executable, "train.py", "--mask-dir", str(tmp_path / "none"), "--output-dir",
                           str(tmp_path / "out")], cwd=SPOL_DIR / "seg", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "run spol/cam/test.py first" in lines[0]


def test_seg_test_numbers_for_a_model_with_a_known_answer(data, cls_dir, tmp_path):
    # head weight 0, bias 10: sigmoid ~1 everywhere, so every predicted box is the whole 64x64 input
    model = SegModel(pretrained="none")
    torch.nn.init.zeros_(model.linear.weight)
    torch.nn.init.constant_(model.linear.bias, 10.0)
    torch.save(model.state_dict(), tmp_path / "model.pth")
    run(seg_test, "seg_test", ["--data-root", data, "--output-dir", tmp_path, "--cls-dir", cls_dir,
                               "--protocol", "spol", "--batch-size", "6"] + TINY)
    results = json.loads((tmp_path / "spol" / "metrics.json").read_text())
    preds = read_predictions(cls_dir / "predictions.csv")
    whole = [0, 0, 64, 64]  # the authors' box [x, y, x + w, y + h] of the whole input
    hits, top1, top5, no_gt = [], [], [], []
    for r in load_records(data, "cub", "test"):
        gt = get_protocol("center_crop", 64, 72).gt_boxes(r.boxes, r.size)
        no_gt.append(len(gt) == 0)
        hits.append(len(gt) > 0 and max(spol_iou(whole, g) for g in gt) >= 0.5)
        top1.append(hits[-1] and preds[r.image_id].top1_correct)
        top5.append(hits[-1] and preds[r.image_id].top5_correct)
    assert 0 < sum(hits) < len(hits)  # a real answer: some hits, some misses
    assert results["gt_known_loc"] == pytest.approx(100 * np.mean(hits))
    assert results["top1_loc"] == pytest.approx(100 * np.mean(top1))
    assert results["top5_loc"] == pytest.approx(100 * np.mean(top5))
    rows = list(csv.reader(open(tmp_path / "spol" / "boxes.csv")))[1:]
    assert all(row[1:] == ["0", "0", "64", "64"] for row in rows)
    # the authors' computation: images with no GT box left in the crop are skipped, not missed
    run(seg_test, "seg_test", ["--data-root", data, "--output-dir", tmp_path, "--cls-dir", cls_dir,
                               "--protocol", "spol-official", "--batch-size", "6"] + TINY)
    official = json.loads((tmp_path / "spol-official" / "metrics.json").read_text())
    counted = [h for h, skip in zip(hits, no_gt) if not skip]
    assert official["num_skipped"] == sum(no_gt) and official["num_counted"] == len(counted)
    assert official["gt_known_loc"] == pytest.approx(100 * np.mean(counted))
    assert (tmp_path / "spol-official" / "hits.csv").read_text().count(",no GT box in the crop") == sum(no_gt)


def test_resolved_args_yaml_parses_back(seg_dir, cam_dir):
    """A training step's args.yaml and its test step's test_args.yaml, side by side in the stage folder."""
    for module, stage, path in ((seg_train, "seg_train", seg_dir / "args.yaml"),
                                (cam_test, "cam_test", cam_dir / "test_args.yaml")):
        args = parse_args(module.get_args_parser(), ["--config", str(path)], stage=stage)
        assert args.device == "cpu" and args.batch_size == 4
    assert "mask_workers" not in yaml.safe_load((cam_dir / "args.yaml").read_text())  # the training run's


def test_predictions_of_another_split_are_refused_before_inference(data, seg_dir, tmp_path):
    from utils.evaluation.handoff import write_predictions

    train = load_records(data, "cub", "train")
    write_predictions(tmp_path / "predictions.csv", [r.image_id for r in train], [r.label for r in train],
                      [[r.label] for r in train])
    with pytest.raises(ValueError, match="run spol/cls/test.py on that split"):
        run(seg_test, "seg_test", ["--data-root", data, "--output-dir", tmp_path / "o", "--cls-dir", tmp_path,
                                   "--checkpoint", seg_dir / "model.pth"] + TINY)


def test_a_diverged_cam_model_stops_pseudo_masks_naming_the_image(data, cam_dir, tmp_path):
    # weights holding NaN give NaN maps: no PNG may be written from them (it would cast to garbage)
    state = torch.load(cam_dir / "model.pth", weights_only=True)
    state["linear.bias"] = torch.full_like(state["linear.bias"], float("nan"))
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(FloatingPointError, match=r"\.jpg: the CAM model gives a non-finite map"):
        run(cam_test, "cam_test", ["--data-root", data, "--output-dir", tmp_path / "cam", "--device", "cpu",
                                   "--workers", "0", "--resize-size", "72", "--batch-size", "4",
                                   "--checkpoint", tmp_path / "nan.pth"])
    assert not list((tmp_path / "cam").rglob("*.png"))


def test_output_stride_reaches_the_cam_and_seg_test_steps_from_args_yaml(data, tmp_path, monkeypatch, capsys):
    """cam and seg trained with --output-stride 8 (ResNet-18): their test steps, called in-process and
    given no --output-stride, build the models at output stride 8 from the training runs' args.yaml."""
    from utils.evaluation.handoff import write_predictions

    built = []

    def spy(cls):
        def make(*a, **kw):
            built.append((cls.__name__, kw.get("output_stride")))
            return cls(*a, **kw)
        return make

    monkeypatch.setattr(cam_test, "CAMModel", spy(CAMModel))
    monkeypatch.setattr(seg_test, "SegModel", spy(SegModel))
    cam, seg = tmp_path / "cam", tmp_path / "seg"
    base = ["--data-root", data, "--backbone", "resnet18", "--batch-size", "4"]
    run(cam_train, "cam_train", base + TINY + ["--output-dir", cam, "--pretrained", "none", "--epochs", "1",
                                               "--max-steps-per-epoch", "1", "--output-stride", "8"])
    assert yaml.safe_load((cam / "args.yaml").read_text())["output_stride"] == 8
    run(cam_test, "cam_test", base + ["--output-dir", cam, "--device", "cpu", "--workers", "0",
                                      "--resize-size", "72"])
    assert built == [("CAMModel", 8)] and "--output-stride 8" in capsys.readouterr().err
    run(seg_train, "seg_train", base + TINY + ["--output-dir", seg, "--mask-dir", cam / "pseudo_masks",
                                               "--pretrained", "none", "--epochs", "1", "--max-steps-per-epoch",
                                               "1", "--output-stride", "8"])
    test = load_records(data, "cub", "test")
    write_predictions(tmp_path / "cls" / "predictions.csv", [r.image_id for r in test], [r.label for r in test],
                      [[r.label] for r in test])
    run(seg_test, "seg_test", base + TINY + ["--output-dir", seg, "--cls-dir", tmp_path / "cls",
                                             "--protocol", "wsol", "--grid-images", "0"])
    assert built[-1] == ("SegModel", 8)
    assert yaml.safe_load((seg / "test_args.yaml").read_text())["output_stride"] == 8
