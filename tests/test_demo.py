"""demo.py at a tiny size: every stage runs, results.json has every row, every picture is written."""
import json
from pathlib import Path

import numpy as np
import pytest

import demo
from utils.layouts import load_records
from utils.protocol import get_protocol
from utils.metrics import box_iou

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROWS = ["CAM, paper's recipe", "CAM, aggressive fine-tuning", "SPOL", "SLT-Net localizer map", "SLT-Net (final)",
        "Whole-image box"]
TRAIN_STAGES = ["cam/localizer", "cam_aggressive/localizer", "spol/cls", "spol/cam", "spol/seg",
                "sltnet/localizer", "sltnet/classifier"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("demo")
    args = demo.get_args_parser().parse_args(
        ["--tiny", "--device", "cpu", "--data-out", str(base / "data"), "--output-dir", str(base / "out"),
         "--pretrain-dir", str(base / "resource")])
    results = demo.main(args)
    return base, results


def test_tiny_demo_writes_every_row_and_picture(tiny_run):
    base, results = tiny_run
    out = base / "out"
    saved = json.loads((out / "results.json").read_text())
    names = [r["method"] for r in saved["rows"]]
    assert names[:6] == ROWS
    assert names[6].startswith("Centre box (") and names[7] == "True mask (upper bound)"
    assert [r["kind"] for r in saved["rows"]] == ["method"] * 5 + ["baseline"] * 2 + ["upper_bound"]
    for row in saved["rows"]:
        assert row["gt_known_loc"] is not None
    for row in saved["rows"][:5]:
        assert row["top1_cls"] is not None and row["top1_loc"] is not None
    for key in ("grid", "curves", "losses"):
        assert (out / saved["figures"][key]).read_bytes()[:8] == PNG_MAGIC
        assert f"]({saved['figures'][key]})" in (out / "report.md").read_text()
    # the stages themselves ran: their own outputs and training logs are there
    runs = out / "runs"
    for path in ("cam/localizer/model.pth", "spol/cls/predictions.csv", "spol/cam/pseudo_masks.json",
                 "spol/seg/model.pth", "sltnet/classifier/test/predictions.csv", "sltnet/regressor/test/metrics.json"):
        assert (runs / path).is_file(), path
    assert len(saved["loss_logs"]) == 7
    for log in saved["loss_logs"].values():
        assert Path(log).is_file() and Path(log).name == "log.jsonl"


def test_tiny_demo_baselines_match_hand_computation(tiny_run):
    base, results = tiny_run
    size = results["settings"]["input_size"]
    test = load_records(base / "data", "cub", "test")
    rows = {r["method"]: r for r in results["rows"]}
    # whole image vs each GT box, inclusive IoU >= 0.5
    whole = np.array([[0, 0, size - 1, size - 1]])
    hits = [box_iou(whole, get_protocol("resize", size).gt_boxes(r.boxes, r.size), inclusive=True).max() >= 0.5
            for r in test]
    assert rows["Whole-image box"]["gt_known_loc"] == pytest.approx(100.0 * np.mean(hits))
    assert rows["True mask (upper bound)"]["gt_known_loc"] == pytest.approx(100.0)
    assert rows["True mask (upper bound)"]["pxap"] == pytest.approx(100.0)
    # the centre box fraction is the one chosen on the TRAINING split
    fraction, _ = demo.choose_centre_fraction(load_records(base / "data", "cub", "train"), size)
    assert f"({fraction:.0%} of the side)" in [n for n in rows if n.startswith("Centre")][0]


def test_centre_box_map_and_fraction_by_hand():
    m = demo.centre_box_map(10, 0.6)
    assert m.sum() == 36 and m[2, 2] == 1 and m[1, 1] == 0 and m[7, 7] == 1 and m[8, 8] == 0


def test_unknown_demo_setting_is_an_error(tmp_path):
    cfg = tmp_path / "demo.yaml"
    cfg.write_text("demo:\n  classes: 3\n  colour: red\n")
    args = demo.get_args_parser().parse_args(["--config", str(cfg)])
    with pytest.raises(ValueError, match="colour"):
        demo.resolve_settings(args)
    cfg.write_text("demo:\n  classes: 3\n")
    args = demo.get_args_parser().parse_args(["--config", str(cfg), "--classes", "7"])
    assert demo.resolve_settings(args)["classes"] == 7      # command line wins over the config


def test_tiny_demo_pretrains_once_and_every_training_stage_starts_from_the_file(tiny_run):
    import hashlib

    import torch

    from network.backbones import build_backbone
    from utils.checkpoint import load_checkpoint

    base, results = tiny_run
    weights = Path(results["pretrained"])
    # the stand-in pretraining ran (2 steps) into --pretrain-dir, under a name encoding its settings
    net = results["settings"]["backbone"]  # configs/demo.yaml's choice
    assert weights.parent == base / "resource" and weights.name.startswith(f"standin_{net}_s64_c54_st2_b4_")
    info = json.loads(weights.with_suffix(".json").read_text())
    assert info["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest() == results["pretraining"]["sha256"]
    assert 0.0 <= info["heldout_top1"] <= 100.0 and info["images_seen"] == 8
    assert "held-out top-1" in (base / "out" / "report.md").read_text()
    model = build_backbone(net, str(weights))  # strict load
    assert torch.equal(model.conv1.weight, load_checkpoint(weights)["conv1.weight"].float())
    # --pretrained <file> reached every training stage (their checkpoints record their arguments)
    for stage in TRAIN_STAGES:
        ck = load_checkpoint(base / "out" / "runs" / stage / "checkpoint.pth")
        assert ck["args"]["pretrained"] == str(weights), stage
        # ... and so did the demo's backbone (SPOL's cls stages call it --arch)
        assert ck["args"].get("backbone", ck["args"].get("arch")) == net, stage
    # a second run reuses the file instead of pretraining again
    before = weights.stat().st_mtime_ns
    args = demo.get_args_parser().parse_args(["--tiny", "--pretrain-dir", str(base / "resource")])
    path, again = demo.prepare_pretrained(args, demo.resolve_settings(args), True)
    assert path == str(weights) and again["sha256"] == info["sha256"] and weights.stat().st_mtime_ns == before
