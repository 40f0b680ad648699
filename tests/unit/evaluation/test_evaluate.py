"""utils.evaluation.evaluate end to end on the tiny CUB tree of tests/builders.py, with saved .npy maps.

Test split of the tiny tree (images 32 x 24 px):
  img A "001.Red_bird/Red_0002.jpg", label 0, CUB box (x, y, w, h) = (0.5, 1.5, 20, 12)
  img B "002.Blue_bird/Blue_0002.jpg", label 1, CUB box (2, 3, 30, 20)
Protocol "wsol" at input size 32: x * 32/32, y * 32/24, truncated (Choe's resize_bbox):
  A: [int(0.5), int(2.0), int(20.5), int(18.0)] = [0, 2, 20, 18]
  B: [2, int(4.0), 32, int(30.67)] = [2, 4, 32, 30]
Maps (32 x 32):
  A: 0.5 everywhere, 1.0 on rows 2-17 x cols 0-19.
     t <= 0.498 (level int(t*255) <= 126 < 127): whole map -> box [0, 0, 31, 31] (x+w = 32 -> 31);
       inclusive IoU with [0,2,20,18] = 21*17 / 32*32 = 357/1024 = 0.349 (hit at IoU 30 only)
     t >= 0.499: block -> boundingRect (0, 2, 20, 16) -> [0, 2, 20, 18], IoU 1
  B: 0 outside, 0.75 (uint8 191) on rows 4-29 x cols 2-31, 1.0 on rows 10-13 x cols 10-13.
     t <= 0.749 (level <= 190): outer -> (2, 4, 30, 26) -> [2, 4, min(32, 31), 30];
       IoU with [2,4,32,30]: 30*27 / 31*27 = 810/837 = 0.968
     t >= 0.750: inner [10, 10, 14, 14] (25 px): 25/837 = 0.03, a miss
  => IoU 50 curve: 50 for t <= 0.498, 100 for 0.499..0.749, 50 after: MaxBoxAcc 100 at 0.499.
"""
import json
import subprocess
import sys

import numpy as np
import pytest

from utils.data.layouts import load_records
from utils.evaluation.protocol import get_protocol
from utils.errors import DataError
from utils.evaluation.evaluate import evaluate_scoremaps, get_args_parser, main, scoremap_path
from utils.evaluation.handoff import write_predictions

try:  # `python -m pytest` from the repository root puts the root on sys.path
    from tests.builders import evaluate_in_memory
except ImportError:  # plain `pytest`
    from builders import evaluate_in_memory

ID_A = "001.Red_bird/Red_0002.jpg"
ID_B = "002.Blue_bird/Blue_0002.jpg"


def map_a():
    m = np.full((32, 32), 0.5)
    m[2:18, 0:20] = 1.0
    return m


def map_b():
    m = np.zeros((32, 32))
    m[4:30, 2:32] = 0.75
    m[10:14, 10:14] = 1.0
    return m


@pytest.fixture
def cub_with_maps(tiny_cub, tmp_path):
    maps = tmp_path / "scoremaps"
    for image_id, m in ((ID_A, map_a()), (ID_B, map_b())):
        path = scoremap_path(maps, image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, m.astype(np.float32))
    return tiny_cub, maps


def tie_aware_ap(scores, labels):
    """AP with tied scores grouped (each distinct score is one threshold), in percent."""
    total, ap, prev_recall = labels.sum(), 0.0, 0.0
    for v in np.unique(scores)[::-1]:
        sel = scores >= v
        tp = labels[sel].sum()
        recall = tp / total
        ap += tp / sel.sum() * (recall - prev_recall)
        prev_recall = recall
    return 100 * ap


def run_cli(tmp_path, root, maps, *extra):
    out = tmp_path / "eval" / "result.json"
    argv = ["--data-root", str(root), "--layout", "cub", "--split", "test", "--scoremaps", str(maps),
            "--input-size", "32", "--output", str(out), *extra]
    main(get_args_parser().parse_args(argv))
    return json.loads(out.read_text()), out


def test_cli_wsol_end_to_end(cub_with_maps, tmp_path, capsys):
    root, maps = cub_with_maps
    preds = tmp_path / "predictions.csv"
    write_predictions(preds, [ID_A, ID_B], [0, 1], [[0, 1], [0, 1]])  # A top-1 right, B top-5 only
    res, out = run_cli(tmp_path, root, maps, "--protocol", "wsol", "--predictions", str(preds))
    assert res["protocol"] == "wsol" and res["split"] == "test" and res["num_images"] == 2
    assert res["maxboxacc"] == 100.0 and res["best_threshold"] == pytest.approx(0.499)
    curve = res["curves"]["maxboxacc_iou50"]
    assert curve[498] == 50.0 and curve[499] == 100.0 and curve[749] == 100.0 and curve[750] == 50.0
    # IoU 30: A hits at every threshold (0.349 or 1), B until 0.749 -> 100 (first at t = 0)
    # IoU 70: A from 0.499 (IoU 1), B until 0.749 (0.968) -> 100 at 0.499
    assert res["maxboxacc_v2_per_iou"] == {"30": 100.0, "50": 100.0, "70": 100.0}
    assert res["maxboxacc_v2"] == 100.0
    assert res["best_threshold_v2_per_iou"]["30"] == 0.0
    # GT-known at the sweep's best threshold 0.499: both hit; Top-1: A only; Top-5: both
    assert res["threshold_used"] == res["best_threshold"]
    assert (res["gt_known_loc"], res["top1_loc"], res["top5_loc"]) == (100.0, 50.0, 100.0)
    assert res["iou_threshold"] == 0.5 and res["iou_compare"] == ">=" and res["cam_curve_interval"] == 0.001
    assert len(res["curves"]["thresholds"]) == 1000
    # PxAP over both images against the GT masks (raw value > 0.5 is foreground)
    records = load_records(root, "cub", "test")
    scores = np.concatenate([map_a().ravel(), map_b().ravel()]).astype(np.float32).astype(np.float64)
    labels = np.concatenate([(get_protocol("resize", 32).gt_mask(r) > 0.5).ravel() for r in records]).astype(int)
    assert res["pxap"] == pytest.approx(tie_aware_ap(scores, labels))
    table = out.with_suffix(".txt").read_text()
    assert "MaxBoxAcc (IoU 50)  100.00" in table and "Top-1 Loc" in table
    assert table in capsys.readouterr().out


def test_cli_wsol_fixed_threshold(cub_with_maps, tmp_path):
    root, maps = cub_with_maps
    # fixed t = 0.8: A block (hit), B inner box (miss) -> 50; the sweep numbers do not change
    res, _ = run_cli(tmp_path, root, maps, "--protocol", "wsol", "--threshold", "0.8")
    assert res["gt_known_loc"] == 50.0 and res["threshold_used"] == 0.8 and res["maxboxacc"] == 100.0
    assert "top1_loc" not in res


def test_cli_spol_protocol(cub_with_maps, tmp_path):
    root, maps = cub_with_maps
    # spol: resize 36, centre crop 32 (offset 2): A's box -> [0, 0.25, 21.06, 18.25],
    # B's -> [0.25, 2.5, 31, 31] (clipped). Absolute thresholds, SPOL's box rule:
    #   t = 0.2: A whole map [0,0,31,31]: IoU 22.06*19 / 1024 = 0.41 (miss); B outer box:
    #            810 / (31.75 * 29.5) = 0.865 (hit) -> 50
    #   t = 0.6: A block [0,2,20,18]: 21*17 / 22.06*19 = 0.85 (hit); B outer (0.75 > 0.6): hit -> 100
    res, _ = run_cli(tmp_path, root, maps, "--protocol", "spol", "--resize-size", "36", "--threshold", "0.2")
    assert res["threshold_used"] == 0.2 and res["gt_known_loc"] == 50.0
    again, _ = run_cli(tmp_path, root, maps, "--protocol", "center_crop", "--resize-size", "36", "--threshold", "0.2")
    assert again["protocol"] == "center_crop" and again["gt_known_loc"] == res["gt_known_loc"]
    with pytest.raises(ValueError, match="needs --threshold"):  # SPOL's thresholds live in configs/spol_*.yaml
        run_cli(tmp_path, root, maps, "--protocol", "spol", "--resize-size", "36")
    res, _ = run_cli(tmp_path, root, maps, "--protocol", "spol", "--resize-size", "36", "--threshold", "0.6",
                     "--iou-compare", ">")
    assert res["gt_known_loc"] == 100.0 and res["iou_compare"] == ">" and res["resize_size"] == 36


def test_in_process_sources_agree(cub_with_maps):
    root, maps = cub_with_maps
    records = load_records(root, "cub", "test")
    kw = dict(input_size=32, cam_curve_interval=0.01)
    from_dir = evaluate_scoremaps(records, maps, "wsol", **kw)
    as_dict = {ID_A: map_a().astype(np.float32), ID_B: map_b().astype(np.float32)}
    assert evaluate_in_memory(records, as_dict, "wsol", **kw) == from_dir
    assert evaluate_in_memory(records[::-1], as_dict, "wsol", **kw) == from_dir


@pytest.mark.slow
def test_workers_agree_with_one_process(cub_with_maps):
    root, maps = cub_with_maps
    records = load_records(root, "cub", "test")
    kw = dict(input_size=32, cam_curve_interval=0.01)
    from_dir = evaluate_scoremaps(records, maps, "wsol", **kw)
    assert evaluate_scoremaps(records, str(maps), "wsol", workers=2, **kw) == from_dir


def test_the_spol_protocol_needs_a_fixed_threshold(cub_with_maps):
    root, maps = cub_with_maps
    records = load_records(root, "cub", "test")
    kw = dict(input_size=32, cam_curve_interval=0.01)
    with pytest.raises(ValueError, match="fixed threshold"):
        evaluate_scoremaps(records, maps, "spol", **kw)


def test_missing_and_malformed_score_maps_are_errors_naming_the_file(cub_with_maps):
    root, maps = cub_with_maps
    records = load_records(root, "cub", "test")
    path_b = scoremap_path(maps, ID_B)
    path_b.unlink()
    with pytest.raises(DataError, match=r"Blue_0002\.npy: score map not found"):
        evaluate_scoremaps(records, maps, "wsol", input_size=32)
    np.save(path_b, np.zeros((2, 32, 32)))
    with pytest.raises(DataError, match=r"Blue_0002\.npy: .*2-D"):
        evaluate_scoremaps(records, maps, "wsol", input_size=32)
    np.save(path_b, np.full((32, 32), 1.5))
    with pytest.raises(DataError, match=r"Blue_0002\.npy: .*\[0, 1\]"):
        evaluate_scoremaps(records, maps, "wsol", input_size=32)
    np.save(path_b, np.zeros((28, 28)))
    with pytest.raises(DataError, match=r"Blue_0002\.npy: .*input size"):
        evaluate_scoremaps(records, maps, "wsol", input_size=32)
    path_b.write_bytes(b"not an npy file")
    with pytest.raises(DataError, match=r"Blue_0002\.npy: unreadable"):
        evaluate_scoremaps(records, maps, "wsol", input_size=32)


def test_predictions_must_cover_the_split(cub_with_maps, tmp_path):
    root, maps = cub_with_maps
    records = load_records(root, "cub", "test")
    preds = tmp_path / "predictions.csv"
    write_predictions(preds, [ID_A], [0], [[0, 1]])
    with pytest.raises(DataError, match="no prediction for image 002.Blue_bird/Blue_0002.jpg"):
        evaluate_scoremaps(records, maps, "wsol", input_size=32, predictions=preds)
    write_predictions(preds, [ID_A, ID_B], [0, 0], [[0, 1], [0, 1]])
    with pytest.raises(DataError, match="differs from the dataset"):
        evaluate_scoremaps(records, maps, "wsol", input_size=32, predictions=preds)


@pytest.mark.slow
def test_module_entry_point(cub_with_maps, tmp_path):
    root, maps = cub_with_maps
    out = tmp_path / "cli.json"
    proc = subprocess.run([sys.executable, "-m", "utils.evaluation", "--data-root", str(root), "--layout", "cub",
                           "--split", "test", "--scoremaps", str(maps), "--protocol", "wsol", "--input-size", "32",
                           "--cam-curve-interval", "0.01", "--output", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["maxboxacc"] == 100.0 and "MaxBoxAccV2" in proc.stdout


def test_score_maps_named_as_choe_et_al_write_them_score_as_ours(cub_with_maps, tmp_path):
    """wsolevaluation's inference.py saves ``np.save(<scoremap_root>/<image_id>, map)``: the image id
    with its extension and sub-folders, ``.npy`` appended by numpy (``.../Red_0002.jpg.npy``)."""
    root, ours = cub_with_maps
    theirs = tmp_path / "choe_scoremaps"
    for image_id, m in ((ID_A, map_a()), (ID_B, map_b())):
        (theirs / image_id).parent.mkdir(parents=True, exist_ok=True)
        np.save(str(theirs / image_id), m.astype(np.float32))  # as their inference.py does
    assert (theirs / (ID_A + ".npy")).is_file() and not scoremap_path(theirs, ID_A).exists()
    a, _ = run_cli(tmp_path / "a", root, ours, "--protocol", "wsol")
    b, _ = run_cli(tmp_path / "b", root, theirs, "--protocol", "wsol")
    assert a.pop("scoremaps") != b.pop("scoremaps")
    assert a == b and a["maxboxacc"] == 100.0
    (theirs / (ID_B + ".npy")).unlink()  # the error names both places it looked
    with pytest.raises(DataError, match=r"Blue_0002\.npy.*Blue_0002\.jpg\.npy"):
        run_cli(tmp_path / "c", root, theirs, "--protocol", "wsol")


def test_maxboxacc_keeps_choes_placeholder_box_gt_known_counts_a_miss(tmp_path):
    """A map with nothing above the threshold: Choe's [0, 0, 0, 0] placeholder box. MaxBoxAcc scores
    it like any box (a hit when the GT box sits in the top-left corner, as their code does);
    GT-known Loc counts the image as a miss."""
    from utils.data.layouts import Record
    from utils.evaluation.metrics import reference_best_iou_per_threshold

    # 16 x 16 images at input 8: the corner box [0, 0, 1, 1] truncates to [0, 0, 0, 0] (int(0.5) = 0)
    corner = Record("a/corner.jpg", str(tmp_path / "a.jpg"), 0, np.array([[0, 0, 1, 1]], np.float32), (16, 16), None)
    middle = Record("a/middle.jpg", str(tmp_path / "b.jpg"), 0, np.array([[4, 4, 12, 12]], np.float32), (16, 16), None)
    maps = {r.image_id: np.zeros((8, 8)) for r in (corner, middle)}
    res = evaluate_in_memory([corner, middle], maps, "resize", input_size=8, threshold=0.5, cam_curve_interval=0.1)
    # Choe's own computation (transcribed in utils.evaluation.metrics): IoU 1 for the corner image at every threshold
    gt = get_protocol("resize", 8).gt_boxes(corner.boxes, corner.size)
    np.testing.assert_array_equal(gt, [[0, 0, 0, 0]])
    assert np.all(reference_best_iou_per_threshold(maps["a/corner.jpg"], gt, np.arange(0, 1, 0.1)) == 1.0)
    assert res["maxboxacc"] == 50.0 and res["maxboxacc_v2_per_iou"]["70"] == 50.0
    assert res["gt_known_loc"] == 0.0
    # the SPOL protocols never compute the placeholder's IoU either: a miss (or skipped, spol_official)
    spol = evaluate_in_memory([corner, middle], maps, "center_crop", input_size=8, resize_size=8, threshold=0.5,
                              cam_curve_interval=0.1)
    assert spol["gt_known_loc"] == 0.0 and [o["skipped"] for o in spol["per_image"]] == [None, None]
