"""``python -m utils.evaluation --boxes``: a file of predicted boxes scored by the evaluator, by hand on the
tiny CUB tree, equal to the map path when the boxes are a map's at a fixed threshold, and its bad input.

Test split of the tiny tree (images 32 x 24 px; GT boxes x0, y0, x1, y1 = x, y, x + w, y + h):
  A "001.Red_bird/Red_0002.jpg", label 0, GT [0.5, 1.5, 20.5, 13.5]
  B "002.Blue_bird/Blue_0002.jpg", label 1, GT [2, 3, 32, 23]
resize at input 32 (x * 32 / 32, y * 32 / 24, truncated): GT A [0, 2, 20, 18], GT B [2, 4, 32, 30].
Boxes in original pixels go the same way:
  A "0 3 10 12" -> [0, 4, 10, 16]: inside GT A, inclusive IoU 11 * 13 / (21 * 17) = 143 / 357 = 0.401
  B "2 3 32 21" -> [2, 4, 32, 28]: inside GT B, 31 * 25 / (31 * 27) = 25 / 27 = 0.926
"""
import json

import numpy as np
import pytest

from utils.data.layouts import Record, load_records
from utils.errors import DataError
from utils.evaluation.evaluate import cli, evaluate_boxes
from utils.evaluation.handoff import classification_flags, read_box_file, write_boxes_csv, write_predictions
from utils.evaluation.protocol import get_protocol

try:  # `python -m pytest` from the repository root puts the root on sys.path
    from tests.builders import evaluate_in_memory
except ImportError:  # plain `pytest`
    from builders import evaluate_in_memory

ID_A = "001.Red_bird/Red_0002.jpg"
ID_B = "002.Blue_bird/Blue_0002.jpg"


def score(tmp_path, root, text, *extra, name="boxes.txt"):
    """Write ``text`` as the box file and run ``python -m utils.evaluation --boxes`` on it in-process."""
    boxes = tmp_path / name
    boxes.write_text(text)
    out = tmp_path / "eval" / f"{boxes.stem}_scored.json"
    cli(["--data-root", str(root), "--layout", "cub", "--split", "test", "--boxes", str(boxes), "--input-size", "32",
         "--output", str(out), *(extra or ("--protocol", "wsol"))])
    return json.loads(out.read_text()), out


def one_error(capsys, tmp_path, root, text, *extra, name="boxes.txt") -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        score(tmp_path, root, text, *extra, name=name)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert info.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "eval").exists()  # nothing written
    return lines[0]


# ----------------------------------------------------------------------------- by hand
def test_plain_boxes_in_original_pixels_by_hand(tiny_cub, tmp_path, capsys):
    res, out = score(tmp_path, tiny_cub, f"{ID_B} 2 3 32 21\n{ID_A},0,3,10,12\n")  # comma or space, any order
    assert res["gt_known_loc"] == 50.0                                   # B only (0.926; A 0.401)
    assert res["box_acc_per_iou"] == {"30": 100.0, "50": 50.0, "70": 50.0}
    assert res["box_acc_mean"] == pytest.approx(200 / 3)
    assert res["images_without_box"] == [] and res["num_images_without_box"] == 0
    assert res["boxes_format"] == "plain" and res["boxes_frame"].startswith("original image pixels")
    assert "maxboxacc" not in res and "maxboxacc_v2" not in res and "threshold_used" not in res
    table = out.with_suffix(".txt").read_text()
    assert "GT-known Loc     50.00" in table and "66.67 (IoU 30/50/70: 100.00 / 50.00 / 50.00" in table
    assert "not MaxBoxAccV2" in table and table in capsys.readouterr().out


def test_top1_top5_loc_with_predictions(tiny_cub, tmp_path):
    # A boxed exactly (its GT box: IoU 1), B at 0.926: both hits. Classifier: A top-5 only, B top-1.
    preds = tmp_path / "predictions.csv"
    write_predictions(preds, [ID_A, ID_B], [0, 1], [[1, 0], [1, 0]])
    res, _ = score(tmp_path, tiny_cub, f"{ID_A} 0.5 1.5 20.5 13.5\n{ID_B} 2 3 32 21\n", "--protocol", "resize",
                   "--predictions", str(preds))
    assert (res["gt_known_loc"], res["top1_loc"], res["top5_loc"]) == (100.0, 50.0, 100.0)
    assert res["box_acc_per_iou"] == {"30": 100.0, "50": 100.0, "70": 100.0}
    # --iou-threshold 0.95: B (0.926) misses, A (1.0) still hits, and Top-k follow
    res, _ = score(tmp_path, tiny_cub, f"{ID_A} 0.5 1.5 20.5 13.5\n{ID_B} 2 3 32 21\n", "--protocol", "resize",
                   "--predictions", str(preds), "--iou-threshold", "0.95")
    assert (res["gt_known_loc"], res["top1_loc"], res["top5_loc"]) == (50.0, 0.0, 50.0)
    assert res["box_acc_per_iou"]["70"] == 100.0  # the fixed IoUs do not move with --iou-threshold


def test_an_image_without_a_box_is_a_counted_miss_and_listed(tiny_cub, tmp_path, capsys):
    capsys.readouterr()
    res, out = score(tmp_path, tiny_cub, f"# B only\n\n{ID_B} 2 3 32 21\n")
    assert res["num_images"] == 2 and res["gt_known_loc"] == 50.0
    assert res["num_images_without_box"] == 1 and res["images_without_box"] == [ID_A]
    assert res["box_acc_per_iou"] == {"30": 50.0, "50": 50.0, "70": 50.0}
    err = capsys.readouterr().err
    assert f"warning: {tmp_path / 'boxes.txt'}: 1 of the 2 images of split 'test' have no box: each is a miss" in err
    assert "  without a box  1 (each a miss; images_without_box)" in out.with_suffix(".txt").read_text()


def test_center_crop_by_hand_and_a_box_the_crop_leaves_out(tiny_cub, tmp_path):
    """center_crop, resize 36, crop 32 (offset 2): x / 32 * 36 - 2, y / 24 * 36 - 2, clipped to [0, 32].
    GT A -> [0, 0.25, 21.0625, 18.25]. Box A [0.5, 1.5, 10.5, 13.5] -> [0, 0.25, 9.8125, 18.25]: the same
    rows, SPOL's exclusive IoU 9.8125 / 21.0625 = 157 / 337 = 0.466. B boxed as its GT box: IoU 1."""
    text = f"{ID_A} 0.5 1.5 10.5 13.5\n{ID_B} 2 3 32 23\n"
    res, _ = score(tmp_path, tiny_cub, text, "--protocol", "spol", "--resize-size", "36")
    assert res["gt_known_loc"] == 50.0 and res["box_acc_per_iou"] == {"30": 100.0, "50": 50.0, "70": 50.0}
    assert [o["iou"] for o in res["per_image"]] == pytest.approx([157 / 337, 1.0])
    # A's box within the 1.78 px that the crop cuts on the left (x1 = 1 / 32 * 36 - 2 < 0): no box in the input,
    # a miss that every protocol counts, spol_official too (it skips maps without a contour, not boxes)
    text = f"{ID_A} 0 5 1 10\n{ID_B} 2 3 32 23\n"
    for protocol in ("spol", "spol_official"):
        res, _ = score(tmp_path, tiny_cub, text, "--protocol", protocol, "--resize-size", "36")
        assert res["gt_known_loc"] == 50.0 and res["num_boxes_outside_input"] == 1
        assert res["per_image"][0] == {"image_id": ID_A, "iou": None, "hit": False, "skipped": None}
        assert res["num_images_without_box"] == 0
    assert res["num_counted"] == 2 and res["num_skipped"] == 0


def test_boxes_csv_with_its_sidecar_is_in_the_input_frame(tiny_cub, tmp_path):
    """A test step's boxes.csv: input pixels of the protocol its boxes.json names, scored as written.
    [0, 2, 20, 18] is GT A at input 32 (IoU 1); [2, 4, 32, 28] is B's box of the docstring (0.926)."""
    path = tmp_path / "boxes.csv"
    write_boxes_csv(path, [ID_A, ID_B], [[0, 2, 20, 18], [2, 4, 32, 28]], meta=get_protocol("wsol", 32).meta())
    res, _ = score(tmp_path, tiny_cub, path.read_text(), name="boxes.csv")
    assert res["gt_known_loc"] == 100.0 and res["box_acc_per_iou"]["70"] == 100.0
    assert res["boxes_format"] == "boxes.csv" and res["boxes_frame"].startswith("input pixels of wsol")
    # the same rows without the sidecar are original pixels: A [0, 2, 20, 18] -> [0, 2, 20, 24], 21 * 17 /
    # (21 * 23) = 0.739; B [2, 4, 32, 28] -> [2, 5, 32, 37]: 31 * 26 / (31 * 27 + 31 * 33 - 31 * 26) = 26 / 34
    path.with_suffix(".json").unlink()
    res, _ = score(tmp_path, tiny_cub, path.read_text(), name="boxes.csv")
    assert res["boxes_frame"].startswith("original image pixels")
    assert res["box_acc_per_iou"] == {"30": 100.0, "50": 100.0, "70": 100.0}
    assert res["boxes_frame"].startswith("original image pixels")
    res, _ = score(tmp_path, tiny_cub, path.read_text(), "--protocol", "wsol", "--iou-threshold", "0.75",
                   name="boxes.csv")
    assert res["gt_known_loc"] == 50.0  # B's 0.765 only
    # python -m localize's header (image, ..., score, class): its extra columns are not read
    res, _ = score(tmp_path, tiny_cub, f"image,x0,y0,x1,y1,score,class\n{ID_A},0.5,1.5,20.5,13.5,0.9,0\n"
                                       f"{ID_B},2,3,32,21,0.8,1\n", name="localized.csv")
    assert res["gt_known_loc"] == 100.0 and res["boxes_format"] == "boxes.csv"


def test_a_placeholder_line_is_no_contour_a_missing_line_is_a_counted_miss(tiny_cub, tmp_path):
    """In a test step's boxes.csv ``0,0,0,0`` is the placeholder of a map without contour: spol_official
    skips the image, as the authors' loop does. An image with no line at all is a miss it counts."""
    path = tmp_path / "boxes.csv"
    meta = get_protocol("spol_official", 32, 36).meta()
    write_boxes_csv(path, [ID_A, ID_B], [[0, 0, 0, 0], [0.25, 2.5, 32, 32]], meta=meta)  # B: its GT box
    res, _ = score(tmp_path, tiny_cub, path.read_text(), "--protocol", "spol_official", "--resize-size", "36",
                   name="boxes.csv")
    assert (res["num_counted"], res["num_skipped"], res["gt_known_loc"]) == (1, 1, 100.0)
    assert res["num_skipped_by_reason"] == {"no contour": 1, "no GT box in the crop": 0}
    write_boxes_csv(path, [ID_B], [[0.25, 2.5, 32, 32]], meta=meta)
    res, _ = score(tmp_path, tiny_cub, path.read_text(), "--protocol", "spol_official", "--resize-size", "36",
                   name="boxes.csv")
    assert (res["num_counted"], res["num_skipped"], res["gt_known_loc"]) == (2, 0, 50.0)
    assert res["images_without_box"] == [ID_A] and res["box_acc_per_iou"]["30"] == 50.0


# ----------------------------------------------------------------------------- equal to the map path
SIZES = [(64, 64), (128, 64), (64, 128), (128, 128)]   # multiples of every input and resize below


def blob_map(rng, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    cx, cy, s = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(2, size / 3)
    m = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s)) + 0.2 * rng.random((size, size))
    return ((m - m.min()) / (m.max() - m.min())).astype(np.float32)


def maps_and_records(n: int, size: int):
    """``n`` records of the sizes above with 1-2 random GT boxes, and a map each (every 9th all zero:
    no box at any threshold)."""
    rng = np.random.default_rng(7)
    records, maps = [], {}
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        boxes = []
        for _ in range(int(rng.integers(1, 3))):
            x0, y0 = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
            boxes.append([x0, y0, rng.uniform(x0 + 4, w), rng.uniform(y0 + 4, h)])
        record = Record(f"c{i % 3}/img_{i}.jpg", "", i % 3, np.asarray(boxes, np.float32), (w, h), None)
        records.append(record)
        maps[record.image_id] = np.zeros((size, size), np.float32) if i % 9 == 4 else blob_map(rng, size)
    return records, maps


def to_original(protocol, box, size) -> list:
    """A box of the input back in original pixels (exact for the sizes above: powers of two apart)."""
    geom = protocol.geometry
    (w, h), (rh, rw), (ox, oy) = size, geom["resize"], geom["offset"]
    return [(box[0] + ox) * w / rw, (box[1] + oy) * h / rh, (box[2] + ox) * w / rw, (box[3] + oy) * h / rh]


@pytest.mark.parametrize("name,threshold", [("resize", 0.35), ("resize", 0.6), ("center_crop", 0.45),
                                            ("spol_official", 0.45)])
def test_a_maps_boxes_score_as_the_map_at_that_threshold(tmp_path, name, threshold):
    records, maps = maps_and_records(40, 32)
    protocol = get_protocol(name, 32, 64)
    preds = tmp_path / "predictions.csv"
    write_predictions(preds, [r.image_id for r in records], [r.label for r in records],
                      [[(r.label + d) % 3 for d in ((0, 1), (1, 0), (1, 2))[k % 3]]  # top-1 right, top-5 only, neither
                       for k, r in enumerate(records)])
    flags = classification_flags(preds, records)
    by_map = evaluate_in_memory(records, maps, name, input_size=32, resize_size=64, threshold=threshold, flags=flags,
                                cam_curve_interval=0.05)
    assert 0 < by_map["gt_known_loc"] < 100 and by_map["top1_loc"] < by_map["top5_loc"]
    boxes = {r.image_id: protocol.box(maps[r.image_id], threshold) for r in records}
    keys = ["gt_known_loc", "top1_loc", "top5_loc"] + (["num_counted", "num_skipped"] if protocol.crops else [])
    options = dict(predictions=preds, input_size=32, resize_size=64)

    # the boxes in the input, as a test step writes them (boxes.csv + boxes.json): the same numbers
    path = tmp_path / "boxes.csv"
    write_boxes_csv(path, list(boxes), list(boxes.values()), meta=protocol.meta())
    by_csv = evaluate_boxes(records, path, name, **options)
    assert {k: by_csv[k] for k in keys} == {k: by_map[k] for k in keys}
    if protocol.crops:
        assert by_csv["per_image"] == by_map["per_image"]
    assert by_csv["box_acc_per_iou"]["50"] == by_map["gt_known_loc"]

    # the same boxes in original pixels, plain lines, images whose map gives no box left out
    plain = tmp_path / "boxes.txt"
    plain.write_text("".join(f"{r.image_id} " + " ".join(f"{v:.17g}" for v in to_original(protocol, boxes[r.image_id],
                                                                                          r.size)) + "\n"
                             for r in records if np.any(boxes[r.image_id])))
    by_plain = evaluate_boxes(records, plain, name, **options)
    no_box = [r.image_id for r in records if not np.any(boxes[r.image_id])]
    assert by_plain["images_without_box"] == no_box and len(no_box) == 4
    if name != "spol_official":
        assert {k: by_plain[k] for k in keys} == {k: by_map[k] for k in keys}
    else:  # the map's skipped images (no contour) are the file's images without a box: counted misses
        assert by_map["num_skipped_by_reason"]["no contour"] == len(no_box)
        assert by_plain["num_skipped_by_reason"] == {"no contour": 0, "no GT box in the crop":
                                                     by_map["num_skipped_by_reason"]["no GT box in the crop"]}
        assert by_plain["num_counted"] == by_map["num_counted"] + len(no_box)
        hits = round(by_map["gt_known_loc"] * by_map["num_counted"] / 100)
        assert by_plain["gt_known_loc"] == pytest.approx(100 * hits / by_plain["num_counted"])


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("text,line,message", [
    (f"{ID_A} 0 3 10\n", 1, "expected 5 fields '<image_id> x0 y0 x1 y1' separated by white space or commas, got 4"),
    (f"{ID_A} 0 3 10 12\n{ID_B} 2 3 x 21\n", 2, "non-numeric box 2 3 x 21"),
    (f"{ID_A} 0 3 nan 12\n", 1, "box 0 3 nan 12 is not finite (NaN or inf)"),
    (f"\n{ID_A} 0 3 inf 12\n", 2, "box 0 3 inf 12 is not finite"),
    (f"{ID_A} 5 3 4 12\n", 1, "inverted box 5 3 4 12 (need x0 <= x1 and y0 <= y1: boxes are x0 y0 x1 y1, not x y w h)"),
    (f"{ID_A} 0 3 10 12\nother/x.jpg 0 3 10 12\n", 2, "image other/x.jpg is not in split 'test' (2 images; its ids "
                                                       f"look like {ID_A})"),
    (f"image_id,x0,y0,x1,y1\n{ID_A},0,3,10,12\n{ID_B},2,3,32,21\n{ID_A},0,3,10,12\n", 4,
     f"image {ID_A} given twice (first on line 2): a boxes.csv holds one box per image"),
    (f"image_id,x0,y0,x1,y1\n{ID_A},5,3,4,12\n", 2, "inverted box 5,3,4,12"),
    (f"image_id,x0,y0,x1,y1\n{ID_A},0,3,10\n", 2, "expected 5 fields (image_id,x0,y0,x1,y1), got 4"),
    ("image_id,x,y,w,h\n", 1, "header must be image_id,x0,y0,x1,y1 (more columns may follow)"),
])
def test_a_bad_line_is_one_error_naming_file_and_line(tiny_cub, tmp_path, capsys, text, line, message):
    name = "boxes.csv" if text.startswith("image") else "boxes.txt"
    got = one_error(capsys, tmp_path, tiny_cub, text, name=name)
    assert got.startswith(f"error: {tmp_path / name}:{line}: {message}"), got


@pytest.mark.parametrize("text,message", [("", "no box in the file"), ("# nothing\n\n", "no box in the file"),
                                          ("image_id,x0,y0,x1,y1\n", "no box in the file")])
def test_a_file_without_a_box_is_an_error(tiny_cub, tmp_path, capsys, text, message):
    got = one_error(capsys, tmp_path, tiny_cub, text, name="boxes.csv")
    assert got.startswith(f"error: {tmp_path / 'boxes.csv'}: {message}"), got


def test_options_and_sidecars_that_do_not_fit(tiny_cub, tmp_path, capsys):
    line = f"{ID_A} 0 3 10 12\n"
    assert one_error(capsys, tmp_path, tiny_cub, line, "--protocol", "wsol", "--threshold", "0.5") == (
        "error: --threshold boxes a score map: --boxes are scored as they are (leave out --threshold)")
    # a test step's boxes.csv is in the input of the geometry its boxes.json names: another one is refused
    path = tmp_path / "boxes.csv"
    write_boxes_csv(path, [ID_A], [[0, 2, 20, 18]], meta=get_protocol("spol", 32, 36).meta())
    got = one_error(capsys, tmp_path, tiny_cub, path.read_text(), "--protocol", "wsol", name="boxes.csv")
    assert got.startswith(f"error: {tmp_path / 'boxes.json'}: the boxes of boxes.csv are in the input of protocol spol "
                          "(resize 36, centre crop 32), not of --protocol wsol (whole image at 32)")
    got = one_error(capsys, tmp_path, tiny_cub, path.read_text(), "--protocol", "spol", name="boxes.csv")
    assert "(resize 36, centre crop 32), not of --protocol spol (resize 256, centre crop 32)" in got
    (tmp_path / "boxes.json").write_text("{not json")
    got = one_error(capsys, tmp_path, tiny_cub, path.read_text(), "--protocol", "spol", name="boxes.csv")
    assert got.startswith(f"error: {tmp_path / 'boxes.json'}: unreadable sidecar of boxes.csv (JSONDecodeError")
    (tmp_path / "boxes.json").write_text('{"threshold": 0.2}')
    got = one_error(capsys, tmp_path, tiny_cub, path.read_text(), "--protocol", "spol", name="boxes.csv")
    assert "must be a JSON object naming the geometry of its boxes" in got
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli(["--data-root", str(tiny_cub), "--layout", "cub", "--split", "test", "--boxes", str(tmp_path / "none.txt"),
             "--protocol", "wsol", "--output", str(tmp_path / "e.json")])
    assert capsys.readouterr().err == f"error: {tmp_path / 'none.txt'}: --boxes: file not found\n"


def test_harmless_lines_are_warnings_with_a_count(tiny_cub, tmp_path, capsys):
    # a second box for an image in a plain file: the first is scored (B's first box hits, its second would not)
    capsys.readouterr()
    res, _ = score(tmp_path, tiny_cub, f"{ID_A} 0.5 1.5 20.5 13.5\n{ID_B} 2 3 32 21\n{ID_B} 0 0 3 3\n{ID_A} 0 0 1 1\n")
    assert res["gt_known_loc"] == 100.0 and res["boxes_not_scored"]["second box of an image"] == 2
    err = capsys.readouterr().err
    assert "2 line(s) give an image a second box, not scored: the first box of each image is (e.g. line 3)" in err
    # a box for an image that --exclude-ids left out of the split: not scored, one warning
    res, _ = score(tmp_path, tiny_cub, f"{ID_A} 0.5 1.5 20.5 13.5\n{ID_B} 2 3 32 21\n", "--protocol", "wsol",
                   "--exclude-ids", "Blue_0002.jpg")
    assert res["num_images"] == 1 and res["gt_known_loc"] == 100.0
    assert f"1 box(es) for images left out by --exclude-ids, not scored (e.g. {ID_B})" in capsys.readouterr().err
    # an inverted box in a test step's boxes.csv (a box regressor predicts x0, x1 freely): kept, a miss
    path = tmp_path / "boxes.csv"
    write_boxes_csv(path, [ID_A, ID_B], [[0, 2, 20, 18], [12, 4, 2, 30]], meta=get_protocol("wsol", 32).meta())
    res, _ = score(tmp_path, tiny_cub, path.read_text(), name="boxes.csv")
    assert res["gt_known_loc"] == 50.0 and res["num_images_without_box"] == 0
    assert "1 inverted box(es) (x1 < x0 or y1 < y0), scored as written" in capsys.readouterr().err


def test_boxes_csv_reads_back_the_values_scored(tmp_path):
    # a regressor's float32 box: 6 significant digits would move it; integers stay short
    box = np.array([1 / 3, 0.1, 40, 23.456789], np.float32)
    write_boxes_csv(tmp_path / "boxes.csv", ["a.jpg", "b.jpg"], np.stack([box, np.zeros(4, np.float32)]))
    got = read_box_file(tmp_path / "boxes.csv").boxes
    np.testing.assert_array_equal(got["a.jpg"], box.astype(np.float64))
    assert (tmp_path / "boxes.csv").read_text().splitlines()[2] == "b.jpg,0,0,0,0"
    assert ",40," in (tmp_path / "boxes.csv").read_text()


def test_read_box_file_formats(tmp_path):
    path = tmp_path / "b.txt"
    path.write_text("\ufeffa/x.jpg\t1 2 3 4\n# comment\n  b/y.jpg , 5,6 ,7,8  \na/x.jpg 0 0 1 1\n")
    got = read_box_file(path)
    assert (got.kind, got.frame, got.meta) == ("plain", "original", {})
    assert {k: v.tolist() for k, v in got.boxes.items()} == {"a/x.jpg": [1, 2, 3, 4], "b/y.jpg": [5, 6, 7, 8]}
    assert got.lines == {"a/x.jpg": 1, "b/y.jpg": 3} and got.second_boxes == [4]
    path = tmp_path / "boxes.csv"
    write_boxes_csv(path, ["a,1.jpg"], [[1, 2, 3.5, 4]], meta={"protocol": "resize", "input_size": 8})
    got = read_box_file(path)   # an id holding a comma, quoted by the csv module
    assert (got.kind, got.frame, list(got.boxes), got.meta["input_size"]) == ("boxes.csv", "input", ["a,1.jpg"], 8)
    with pytest.raises(DataError, match=r"b\.txt:1: expected 5 fields"):
        (tmp_path / "b.txt").write_text("a b.jpg 1 2 3 4\n")  # an id with a space needs boxes.csv
        read_box_file(tmp_path / "b.txt")
