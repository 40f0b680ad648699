"""demo.py at a tiny size: every stage runs, results.json has every row, every picture is written."""
import json
from pathlib import Path

import numpy as np
import pytest

import demo
from utils.data import load_records, transform_boxes
from utils.metrics import box_iou

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROWS = ["CAM (plain)", "SPOL", "SLT-Net localizer map", "SLT-Net (final)", "Whole-image box"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("demo")
    args = demo.get_args_parser().parse_args(
        ["--tiny", "--device", "cpu", "--data-out", str(base / "data"), "--output-dir", str(base / "out")])
    results = demo.main(args)
    return base, results


def test_tiny_demo_writes_every_row_and_picture(tiny_run):
    base, results = tiny_run
    out = base / "out"
    saved = json.loads((out / "results.json").read_text())
    names = [r["method"] for r in saved["rows"]]
    assert names[:5] == ROWS
    assert names[5].startswith("Centre box (") and names[6] == "True mask (upper bound)"
    assert [r["kind"] for r in saved["rows"]] == ["method"] * 4 + ["baseline"] * 2 + ["upper_bound"]
    for row in saved["rows"]:
        assert row["gt_known_loc"] is not None
    for row in saved["rows"][:4]:
        assert row["top1_cls"] is not None and row["top1_loc"] is not None
    for key in ("grid", "curves", "losses"):
        assert (out / saved["figures"][key]).read_bytes()[:8] == PNG_MAGIC
        assert f"]({saved['figures'][key]})" in (out / "report.md").read_text()
    # the stages themselves ran: their own outputs and training logs are there
    runs = out / "runs"
    for path in ("cam/localizer/model.pth", "spol/cls/predictions.csv", "spol/cam/pseudo_masks.json",
                 "spol/seg/model.pth", "sltnet/classifier/test/predictions.csv", "sltnet/regressor/test/metrics.json"):
        assert (runs / path).is_file(), path
    assert len(saved["loss_logs"]) == 6
    for log in saved["loss_logs"].values():
        assert Path(log).is_file() and Path(log).name == "log.jsonl"


def test_tiny_demo_baselines_match_hand_computation(tiny_run):
    base, results = tiny_run
    size = results["settings"]["input_size"]
    test = load_records(base / "data", "cub", "test")
    rows = {r["method"]: r for r in results["rows"]}
    # whole image vs each GT box, inclusive IoU >= 0.5
    whole = np.array([[0, 0, size - 1, size - 1]])
    hits = [box_iou(whole, transform_boxes(r.boxes, r.size, "wsol", size), inclusive=True).max() >= 0.5
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
