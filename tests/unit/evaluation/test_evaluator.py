"""utils.evaluation.evaluator.LocalizationEvaluator, the evaluator fed one map at a time: the same
metrics and boxes as the folder path (python -m utils.evaluation) under every protocol, the boxes and
hits it returns, shards merged, a 2-process gloo run equal to one process; and the one results writer."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from utils.data.layouts import Record, load_records
from utils.errors import DataError
from utils.evaluation.evaluate import evaluate_scoremaps, load_scoremap
from utils.evaluation.evaluator import LocalizationEvaluator
from utils.evaluation.handoff import save_scoremap, write_predictions
from utils.evaluation.protocol import get_protocol
from utils.evaluation.results import format_table, write_metrics

try:  # `python -m pytest` from the repository root puts the root on sys.path
    from tests.builders import make_tiny_openimages
except ImportError:  # plain `pytest`
    from builders import make_tiny_openimages

SIZE = 32


def blob_map(seed: int, size: int = SIZE) -> np.ndarray:
    """A [0, 1] map of two Gaussian blobs plus noise: several contours at many levels, ties included."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    m = np.zeros((size, size))
    for _ in range(2):
        cx, cy, s = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(2, size / 3)
        m += rng.uniform(0.3, 1) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s))
    m += 0.15 * rng.random((size, size))
    m = (m - m.min()) / (m.max() - m.min())
    if seed % 5 == 0:
        m[m < 0.4] = 0  # flat zero background
    return m.astype(np.float32)


def random_records(n: int, size: int = SIZE):
    """Records with 1-2 random GT boxes each (no files: box metrics only), some boxes in the corner."""
    rng = np.random.default_rng(1)
    records = []
    for i in range(n):
        w, h = int(rng.integers(24, 60)), int(rng.integers(24, 60))
        boxes = []
        for _ in range(int(rng.integers(1, 3))):
            x0, y0 = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
            boxes.append([x0, y0, rng.uniform(x0 + 2, w), rng.uniform(y0 + 2, h)])
        if i % 7 == 3:
            boxes = [[0, 0, 1, 1]]  # Choe's placeholder box [0, 0, 0, 0] is a hit on this one
        records.append(Record(f"c{i % 3}/img_{i}.jpg", "", i % 3, np.asarray(boxes, np.float32), (w, h), None))
    return records


def fed_in_memory(records, maps, protocol, **options):
    with LocalizationEvaluator(records, protocol, **options) as evaluator:
        for r in records[::-1]:  # any order
            evaluator.accumulate(r.image_id, maps[r.image_id])
        return evaluator.compute()


CASES = [("resize", {}),                            # threshold: the best of the sweep
         ("resize", {"threshold": 0.37}),
         ("resize", {"iou_compare": ">", "inclusive_iou": False}),
         ("center_crop", {"threshold": 0.45}),
         ("spol_official", {"threshold": 0.45}),
         ("wsol", {"threshold": 0.6, "iou_threshold": 0.3})]


@pytest.mark.parametrize("name,options", CASES)
def test_streaming_and_folder_give_the_same_metrics_and_boxes(tiny_cub, tmp_path, name, options):
    # the tiny CUB tree's 4 images (GT masks: PxAP) and 30 records with random boxes
    records = load_records(tiny_cub, "cub", "train") + load_records(tiny_cub, "cub", "test") + random_records(30)
    maps = {r.image_id: blob_map(k) for k, r in enumerate(records)}
    folder = tmp_path / "scoremaps"
    for image_id, m in maps.items():
        save_scoremap(folder, image_id, m)
    predictions = tmp_path / "predictions.csv"
    write_predictions(predictions, [r.image_id for r in records], [r.label for r in records],
                      [[(r.label + k) % 3, (r.label + 1) % 3] for k, r in enumerate(records)])
    protocol = get_protocol(name, SIZE, 40)
    for kept, with_masks in ((records[:4], True), (records[4:], False)):  # PxAP needs every image's GT mask
        streamed = fed_in_memory(kept, maps, protocol, **options)
        from_folder = evaluate_scoremaps(kept, folder, name, input_size=SIZE, resize_size=40, **options)
        assert streamed.metrics == from_folder
        assert ("pxap" in from_folder) == with_masks and "maxboxacc_v2" in from_folder
    # Top-1 / Top-5 Loc: flags in memory, the same flags from predictions.csv
    kept = records[4:]
    from_file = evaluate_scoremaps(kept, folder, name, input_size=SIZE, resize_size=40, predictions=predictions,
                                   **options)
    with open(predictions) as f:
        rows = [line.strip().split(",") for line in f][1:]
    file_flags = {row[0]: (row[3] == "1", row[4] == "1") for row in rows}
    streamed = fed_in_memory(kept, maps, protocol, flags=file_flags, **options)
    assert streamed.metrics == from_file and from_file["top1_loc"] <= from_file["top5_loc"]
    # the boxes it scored are the protocol's boxes at the threshold used (as a second pass over the maps finds them)
    used = streamed.metrics["threshold_used"]
    for r in kept:
        np.testing.assert_array_equal(streamed.boxes[r.image_id], protocol.box(load_scoremap(folder, r.image_id, SIZE), used))
    # and the per-image hits recount GT-known Loc
    counted = [h for h in streamed.hits if h["skipped"] is None]
    assert [h["image_id"] for h in streamed.hits] == [r.image_id for r in kept]
    assert streamed.metrics["gt_known_loc"] == pytest.approx(100 * np.mean([h["hit"] for h in counted]))
    assert 0 < sum(h["hit"] for h in counted) < len(counted)  # a real answer: hits and misses


def test_instance_masks_streamed_equal_the_folder(tmp_path):
    root = make_tiny_openimages(tmp_path / "oi")
    records = load_records(root, "openimages", "val")
    maps = {r.image_id: blob_map(k, 8) for k, r in enumerate(records)}
    for image_id, m in maps.items():
        save_scoremap(tmp_path / "maps", image_id, m)
    streamed = fed_in_memory(records, maps, get_protocol("resize", 8))
    assert streamed.metrics == evaluate_scoremaps(records, tmp_path / "maps", "resize", input_size=8)
    assert "pxap" in streamed.metrics and streamed.boxes == {} and streamed.hits == []


def test_boxes_and_hits_returned_by_hand():
    """Two 8 x 8 images at input 8. A: a block on rows 2-4, cols 3-5; GT [3, 2, 5, 4]. B: nothing above
    any threshold (an all-zero map) against a GT box in the middle: the [0, 0, 0, 0] placeholder, a miss.
    At the sweep's best threshold (A hits from t = 0, B never) A's box is the block, Choe's
    [x, y, min(x + w, 7), min(y + h, 7)] = [3, 2, 6, 5]: inclusive IoU 9 / 16."""
    a = Record("a.jpg", "", 0, np.array([[3, 2, 5, 4]], np.float32), (8, 8), None)
    b = Record("b.jpg", "", 1, np.array([[2, 2, 6, 6]], np.float32), (8, 8), None)
    block = np.zeros((8, 8), np.float32)
    block[2:5, 3:6] = 1.0
    ev = fed_in_memory([a, b], {"a.jpg": block, "b.jpg": np.zeros((8, 8), np.float32)}, get_protocol("resize", 8),
                       cam_curve_interval=0.1)
    np.testing.assert_array_equal(ev.boxes["a.jpg"], [3, 2, 6, 5])
    np.testing.assert_array_equal(ev.boxes["b.jpg"], [0, 0, 0, 0])
    assert ev.hits == [{"image_id": "a.jpg", "iou": 9 / 16, "hit": True, "skipped": None},
                       {"image_id": "b.jpg", "iou": None, "hit": False, "skipped": None}]
    assert ev.metrics["gt_known_loc"] == 50.0 and ev.metrics["threshold_used"] == 0.0
    # a method's own box is scored instead of the map's (the SLT-Net regressor's, no map at all)
    with LocalizationEvaluator([a, b], get_protocol("resize", 8), sweep=False) as boxes_only:
        boxes_only.accumulate("a.jpg", box=[3, 2, 5, 4])   # IoU 1
        boxes_only.accumulate("b.jpg", box=[0, 0, 3, 3])   # inter 2 x 2 = 4, union 16 + 25 - 4 = 37
        got = boxes_only.compute()
    assert [h["iou"] for h in got.hits] == [1.0, 4 / 37] and got.metrics["gt_known_loc"] == 50.0
    assert "maxboxacc" not in got.metrics and "threshold_used" not in got.metrics


def test_boxes_without_a_map_under_every_protocol_and_images_without_a_box():
    """An evaluator fed boxes (sweep=False) needs no threshold, the SPOL protocols too (the SLT-Net test
    steps' boxes under --protocol spol). An image without a box is a miss that every protocol counts;
    a [0, 0, 0, 0] box is the placeholder of a map without contour, which spol_official skips.
    Input 8, no crop (resize 8): A's box is its GT box (IoU 1); C's box [3, 3, 7, 5] is the top half of
    its GT box [3, 3, 7, 7]: exclusive IoU 8 / 16 = 0.5 (a hit with >= and eps 0, center_crop; a miss
    for spol_official's > and 1e-12), inclusive (resize) 15 / 25 = 0.6; B has no box."""
    a = Record("a.jpg", "", 0, np.array([[1, 1, 4, 4]], np.float32), (8, 8), None)
    b = Record("b.jpg", "", 1, np.array([[2, 2, 6, 6]], np.float32), (8, 8), None)
    c = Record("c.jpg", "", 1, np.array([[3, 3, 7, 7]], np.float32), (8, 8), None)
    for name, counted, loc, acc in (("resize", 3, 200 / 3, [200 / 3, 200 / 3, 100 / 3]),
                                    ("center_crop", 3, 200 / 3, [200 / 3, 200 / 3, 100 / 3]),
                                    ("spol_official", 3, 100 / 3, [200 / 3, 100 / 3, 100 / 3])):
        with LocalizationEvaluator([a, b, c], get_protocol(name, 8, 8), sweep=False) as evaluator:
            evaluator.accumulate("a.jpg", box=[1, 1, 4, 4])
            evaluator.accumulate_miss("b.jpg")
            evaluator.accumulate("c.jpg", box=[3, 3, 7, 5])
            got = evaluator.compute()
        assert got.metrics["gt_known_loc"] == pytest.approx(loc), name
        assert got.metrics["images_without_box"] == ["b.jpg"] and got.metrics["num_images_without_box"] == 1
        assert list(got.metrics["box_acc_per_iou"].values()) == pytest.approx(acc), name
        assert got.hits[1] == {"image_id": "b.jpg", "iou": None, "hit": False, "skipped": None}
        assert got.metrics.get("num_counted", 3) == counted
    # the placeholder box: a miss, and skipped by spol_official as a map without contour
    with LocalizationEvaluator([a, b], get_protocol("spol_official", 8, 8), sweep=False) as evaluator:
        evaluator.accumulate("a.jpg", box=[1, 1, 4, 4])
        evaluator.accumulate("b.jpg", box=[0, 0, 0, 0])
        got = evaluator.compute()
    metrics = got.metrics
    assert (metrics["num_counted"], metrics["gt_known_loc"], metrics["num_images_without_box"]) == (1, 100, 0)
    with pytest.raises(ValueError, match="the sweep needs a score map of every image"):
        LocalizationEvaluator([a], get_protocol("resize", 8)).accumulate_miss("a.jpg")
    with pytest.raises(ValueError, match="reason must be"):
        LocalizationEvaluator([a], get_protocol("resize", 8), sweep=False).accumulate_miss("a.jpg", "lost")
    with pytest.raises(ValueError, match="no box: give one, a fixed threshold"):
        LocalizationEvaluator([a], get_protocol("center_crop", 8, 8), sweep=False).accumulate("a.jpg", np.zeros((8, 8)))


def test_shards_merge_to_one_evaluator(tiny_cub):
    records = load_records(tiny_cub, "cub", "train") + load_records(tiny_cub, "cub", "test") + random_records(8)
    maps = {r.image_id: blob_map(k) for k, r in enumerate(records)}
    protocol = get_protocol("spol_official", SIZE, 40)
    one = fed_in_memory(records, maps, protocol, threshold=0.5)
    shards = [LocalizationEvaluator(records, protocol, threshold=0.5) for _ in range(3)]
    for k, r in enumerate(records):
        shards[k % 3].accumulate(r.image_id, maps[r.image_id])
    for shard in shards[1:]:
        shards[0].merge(shard.state())
    merged = shards[0].compute()
    assert merged.metrics == one.metrics and merged.hits == one.hits
    assert all(np.array_equal(merged.boxes[i], one.boxes[i]) for i in one.boxes)
    assert one.metrics["num_skipped"] > 0  # the authors' loop skips images with no contour / no GT box left
    with pytest.raises(ValueError, match="in two shards"):
        shards[0].merge(shards[1].state())


def test_every_image_counted_once_and_bad_maps_named():
    records = random_records(3)
    protocol = get_protocol("resize", SIZE)
    ev = LocalizationEvaluator(records, protocol, cam_curve_interval=0.1)
    ev.accumulate(records[0].image_id, blob_map(0))
    with pytest.raises(ValueError, match="accumulated twice"):
        ev.accumulate(records[0].image_id, blob_map(0))
    with pytest.raises(ValueError, match="not among the evaluated records"):
        ev.accumulate("other.jpg", blob_map(0))
    with pytest.raises(DataError, match=r"<score map of c1/img_1.jpg>: score map shape \(8, 8\) differs"):
        ev.accumulate(records[1].image_id, np.zeros((8, 8)))
    with pytest.raises(DataError, match=r"c2/img_2.jpg>: score map must be a numpy array"):
        ev.accumulate(records[2].image_id, [[0.0]])
    with pytest.raises(ValueError, match="2 of the 3 images were never accumulated"):
        ev.compute()
    with pytest.raises(ValueError, match="needs a fixed threshold"):
        LocalizationEvaluator(records, get_protocol("center_crop", SIZE, 40))
    with pytest.raises(TypeError, match="folder of saved maps"):
        evaluate_scoremaps(records, {r.image_id: blob_map(0) for r in records}, "resize", input_size=SIZE)


@pytest.mark.slow
def test_worker_processes_give_the_same_results(tiny_cub):
    records = load_records(tiny_cub, "cub", "test") + random_records(12)
    records = records[2:]
    maps = {r.image_id: blob_map(k) for k, r in enumerate(records)}
    protocol = get_protocol("resize", SIZE)
    one = fed_in_memory(records, maps, protocol)
    two = fed_in_memory(records, maps, protocol, workers=2)
    assert two.metrics == one.metrics and two.hits == one.hits


# ----------------------------------------------------------------------------- 2 processes (torchrun, gloo)
WORKER = """
import json, sys
sys.path.insert(0, sys.argv[2])  # the repository root: its packages and tests
import numpy as np
import torch
from utils.engine.distributed import DistContext, cleanup, init_distributed, merged_on_main
from utils.engine.inference import run_inference
from utils.evaluation.evaluator import LocalizationEvaluator
from utils.evaluation.protocol import get_protocol
from tests.unit.evaluation.test_evaluator import blob_map, random_records

def evaluate(ctx):
    records = random_records(11)
    out = {}
    for name, options in (("resize", {}), ("spol_official", {"threshold": 0.5})):
        flags = {r.image_id: (k % 2 == 0, True) for k, r in enumerate(records)}
        with LocalizationEvaluator(records, get_protocol(name, 32, 40), flags=flags, **options) as ev:
            data = [{"image": torch.zeros(1), "index": i} for i in range(len(records))]
            def consume(result):
                for i in result.tolist():
                    ev.accumulate(records[i].image_id, blob_map(i))
            run_inference(torch.nn.Identity(), data, lambda m, b: b["index"], ctx, batch_size=2, consume=consume)
            if merged_on_main(ev, ctx) is not None:
                got = ev.compute()
                out[name] = {"metrics": got.metrics, "hits": got.hits,
                             "boxes": {k: np.asarray(v).tolist() for k, v in got.boxes.items()}}
    return out

if __name__ == "__main__":
    ctx = init_distributed("cpu") if sys.argv[1] != "single" else DistContext()
    out = evaluate(ctx)
    if ctx.is_main:
        json.dump(out, open(sys.argv[3], "w"))
    cleanup(ctx)
"""


@pytest.mark.slow
def test_two_process_gloo_run_equals_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    single = subprocess.run([sys.executable, str(script), "single", root, str(tmp_path / "one.json")], env=env,
                            capture_output=True, text=True, timeout=240)
    assert single.returncode == 0, single.stderr[-3000:]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), "gloo", root, str(tmp_path / "two.json")], env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two == one and set(one) == {"resize", "spol_official"}
    assert len(one["resize"]["hits"]) == 11 and one["spol_official"]["metrics"]["num_images"] == 11


# ----------------------------------------------------------------------------- the one writer
def test_one_writer_one_format(tmp_path):
    results = {"protocol": "wsol", "split": "test", "num_images": 2, "gt_known_loc": 50.0, "top1_loc": 25.0,
               "threshold_used": 0.25, "threshold_source": "fixed", "iou_threshold": 0.5, "iou_compare": ">=",
               "maxboxacc": 100.0, "best_threshold": 0.499, "maxboxacc_v2": 90.0,
               "maxboxacc_v2_per_iou": {"30": 100.0, "50": 100.0, "70": 70.0}, "input_size": 32, "box_rule": None,
               "curves": {"thresholds": [0.0, 0.5]}, "per_image": [{"image_id": "a", "hit": True}]}
    text = write_metrics(tmp_path / "metrics.json", results)
    assert text == ("protocol            wsol\n"
                    "split               test\n"
                    "images              2\n"
                    "Top-1 Loc           25.00\n"
                    "GT-known Loc        50.00\n"
                    "  at threshold      0.250 (fixed), IoU >= 0.5\n"
                    "MaxBoxAcc (IoU 50)  100.00 (best threshold 0.499)\n"
                    "MaxBoxAccV2         90.00 (IoU 30/50/70: 100.00 / 100.00 / 70.00)\n"
                    "\n"
                    "input_size  32\n"
                    "box_rule    —\n")
    assert (tmp_path / "metrics.txt").read_text() == text
    assert json.loads((tmp_path / "metrics.json").read_text()) == results
    # a stage's summary of several results: one section each; classification alone
    summary = format_table({"spol": {"gt_known_loc": 10.0}, "paper": {"top1_loc": 80.12}, "checkpoint": "m.pth"})
    assert summary == "checkpoint  m.pth\n\n== spol ==\nGT-known Loc  10.00\n\n== paper ==\nTop-1 Loc  80.12\n"
    assert format_table({"split": "test", "ten_crop": True, "top1_cls": 12.5, "top5_cls": 50.0, "num_images": 8}) == (
        "split      test\nimages     8\nTop-1 CLS  12.50\nTop-5 CLS  50.00\n\nten_crop  True\n")
