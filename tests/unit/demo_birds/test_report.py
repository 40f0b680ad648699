"""demo_birds.report on a hand-made results file: table, pictures, logs, bad input."""
import json

import numpy as np
import pytest

from utils.errors import DataError
from demo_birds.report import (FIGURES, draw_grid, format_value, load_results, main, markdown_table,
                               read_log_jsonl, write_report)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(method, kind="method", **values):
    row = {"method": method, "kind": kind, "top1_cls": None, "top1_loc": None, "gt_known_loc": None,
           "maxboxacc_v2": None, "pxap": None, "threshold": None, "curve": None}
    row.update(values)
    return row


def _log(path, losses):
    lines = [json.dumps({"stage": "s", "epoch": 0, "step": i + 1, "global_step": i + 1, "loss": v})
             for i, v in enumerate(losses)]
    lines.append(json.dumps({"stage": "s", "event": "epoch_end", "epoch": 0, "global_step": len(losses), "loss": 9.0}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def results(tmp_path):
    thresholds = [0.0, 0.25, 0.5, 0.75]
    return {
        "title": "hand-made",
        "dataset": {"classes": 2},
        "protocol": "wsol",
        "rows": [
            _row("CAM", top1_cls=75.0, top1_loc=37.5, gt_known_loc=50.0, maxboxacc_v2=41.25, pxap=60.0,
                 threshold=0.2, threshold_source="fixed", notes="plain CAM",
                 curve={"thresholds": thresholds, "gt_known": [0.0, 50.0, 25.0, 12.5]}),
            _row("Whole-image box", "baseline", gt_known_loc=12.5, maxboxacc_v2=20.0, pxap=30.0,
                 curve={"thresholds": thresholds, "gt_known": [12.5] * 4}),
            _row("GT mask (upper bound)", "upper_bound", gt_known_loc=100.0, maxboxacc_v2=100.0, pxap=100.0),
        ],
        "loss_logs": {"cam train": str(_log(tmp_path / "log.jsonl", [2.0, 1.5, 1.2]))},
        "stages": [{"name": "cam train", "seconds": 3.25}],
        "wall_time_s": 4.5,
    }


def test_format_value():
    assert format_value(None) == "—"
    assert format_value(37.549) == "37.5"
    assert format_value(100) == "100.0"


def test_markdown_table_has_one_line_per_row_with_the_numbers(results):
    table = markdown_table(results["rows"]).splitlines()
    assert len(table) == 2 + 3
    assert table[0] == "| Method | Top-1 Cls | Top-1 Loc | GT-known Loc | MaxBoxAccV2 | PxAP | Box threshold |"
    assert table[2] == "| CAM | 75.0 | 37.5 | 50.0 | 41.2 | 60.0 | 0.200 (fixed) |"
    assert table[3] == "| Whole-image box | — | — | 12.5 | 20.0 | 30.0 | — |"


def test_write_report_writes_json_markdown_and_pictures(tmp_path, results):
    out = tmp_path / "demo"
    image = np.zeros((16, 16, 3), np.uint8)
    sample = {"image": image, "gt_boxes": np.array([[2, 2, 10, 12]]), "mask": np.eye(16),
              "maps": {"CAM": np.linspace(0, 1, 256).reshape(16, 16)}, "boxes": {"CAM": [1, 1, 8, 8]}}
    paths = write_report(results, out, grid_samples=[sample, sample], grid_methods=["CAM"])
    for key in ("grid", "curves", "losses"):
        assert paths[key] == out / FIGURES[key]
        assert paths[key].read_bytes()[:8] == PNG_MAGIC
    saved = json.loads((out / "results.json").read_text())
    assert saved["figures"] == FIGURES and len(saved["rows"]) == 3
    report = (out / "report.md").read_text()
    assert "| CAM | 75.0 | 37.5 | 50.0 | 41.2 | 60.0 |" in report
    for name in FIGURES.values():
        assert f"]({name})" in report
    assert "| cam train | 3.2 |" in report or "| cam train | 3.3 |" in report
    # re-drawing from results.json alone keeps the grid and re-makes the rest
    (out / FIGURES["curves"]).unlink()
    main(type("A", (), {"results": str(out / "results.json")})())
    assert (out / FIGURES["curves"]).is_file() and (out / FIGURES["grid"]).is_file()


def test_read_log_keeps_step_lines_only(tmp_path):
    records = read_log_jsonl(_log(tmp_path / "log.jsonl", [3.0, 2.0]))
    assert [r["loss"] for r in records] == [3.0, 2.0]
    assert [r["global_step"] for r in records] == [1, 2]


def test_bad_log_line_names_file_and_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"global_step": 1, "loss": 1.0}\n{"global_step": 2, "loss": \n')
    with pytest.raises(DataError, match=r"log\.jsonl:2: not a JSON object"):
        read_log_jsonl(path)
    with pytest.raises(DataError, match="not found"):
        read_log_jsonl(tmp_path / "missing.jsonl")


def test_bad_rows_are_refused(tmp_path, results):
    results["rows"][0]["gt_known_loc"] = 150.0
    with pytest.raises(DataError, match="not a percentage"):
        write_report(results, tmp_path)
    del results["rows"][1]["pxap"]
    results["rows"][0]["gt_known_loc"] = 50.0
    with pytest.raises(DataError, match="missing 'pxap'"):
        write_report(results, tmp_path)
    path = tmp_path / "results.json"
    path.write_text("{\n  \"rows\": [\n")
    with pytest.raises(DataError, match="results.json:3"):
        load_results(path)


def test_grid_needs_samples(tmp_path):
    with pytest.raises(ValueError):
        draw_grid([], ["CAM"], tmp_path / "g.png")


def test_seed_spread_by_hand():
    from demo_birds.report import report_markdown, seed_spread, spread_table

    def res(seed, cam, centre_name, centre):
        return {"settings": {"seed": seed}, "rows": [
            {"method": "CAM", "gt_known_loc": cam}, {"method": centre_name, "gt_known_loc": centre}]}

    spread = seed_spread([res(0, 40.0, "Centre box (65% of the side)", 20.0),
                          res(1, 50.0, "Centre box (70% of the side)", 30.0),
                          res(2, 60.0, "Centre box (65% of the side)", 25.0)])
    assert spread["seeds"] == [0, 1, 2]
    assert spread["rows"] == {"CAM": [40.0, 50.0, 60.0], "Centre box": [20.0, 30.0, 25.0]}
    table = spread_table(spread)
    assert "| CAM | 40.0 | 50.0 | 60.0 | 50.0 | 40.0..60.0 |" in table
    assert "| Centre box | 20.0 | 30.0 | 25.0 | 25.0 | 20.0..30.0 |" in table
    text = report_markdown({"rows": [], "seed_spread": spread})
    assert "Seed spread" in text and "| CAM | 40.0" in text

