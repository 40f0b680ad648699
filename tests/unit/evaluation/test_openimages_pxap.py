"""PxAP on OpenImages30k (``--layout openimages``): equal to Choe et al.'s MaskEvaluator on the fixtures
of tests/fixtures/openimages/ (made by running their code, see the README there), and hand-worked cases
with ignore regions.

Hand-worked tree (input size 4, maps 4 x 4, every score in a threshold bin of its own at interval 0.001
except equal scores, so PxAP is the mean over positives of the precision at their rank):

    image "val/0a/a.jpg" (4 x 4): instance m0 = rows 0-1 x cols 0-1, m1 = pixel (row 3, col 3);
    ignore mask = column 3 (rows 0-3): pixels (0,3), (1,3), (2,3) are ignored, (3,3) stays foreground.
    map:  .9  .8  .1  .95
          .7  .6  .1  .95
          .2  .2  .1  .95
          .3  .1  .1  .15
    positives .9 .8 .7 .6 .15; negatives .3 .2 .2 .1 x5; ignored .95 x3.
"""
import json
from pathlib import Path

import numpy as np
import pytest

from utils.data.layouts import load_records
from utils.errors import DataError
from utils.evaluation.evaluate import cli, evaluate_instance_masks, get_args_parser, main
from utils.evaluation.masks import instance_ground_truth
from utils.evaluation.metrics import PxAPAccumulator

try:
    from tests.builders import evaluate_in_memory, make_tiny_openimages
except ImportError:  # plain `pytest` puts tests/ itself on sys.path
    from builders import evaluate_in_memory, make_tiny_openimages

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "openimages"


# ----------------------------------------------------------------------------- Choe et al.'s numbers
def fixture_maps() -> dict:
    """image_id -> score map of tests/fixtures/openimages/scoremaps.npz (README there): ``codes_KK`` are
    k / 4096 maps (float32, exact) stored as second differences, ``map_KK`` float64 maps as they are."""
    z = np.load(FIXTURES / "scoremaps.npz")
    maps = {}
    for k, image_id in enumerate(str(i) for i in z["ids"]):
        if f"codes_{k:02d}" in z.files:
            codes = np.cumsum(np.cumsum(z[f"codes_{k:02d}"].astype(np.int32), axis=0), axis=1)
            maps[image_id] = codes.astype(np.float32) / np.float32(4096)
        else:
            maps[image_id] = z[f"map_{k:02d}"]
    return maps


@pytest.fixture(scope="module")
def reference():
    return np.load(FIXTURES / "reference.npz")


@pytest.fixture(scope="module")
def fixture_records():
    return load_records(FIXTURES / "data", "openimages", "val", metadata_root=FIXTURES / "metadata")


def write_choe_scoremaps(folder: Path, maps: dict, dtype: str) -> Path:
    """Maps as their inference.py saves them: ``np.save(<folder>/<image_id>)`` -> ``<image_id>.npy``."""
    for image_id, m in maps.items():
        path = folder / (image_id + ".npy")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, m.astype(dtype))
    return folder


def test_ground_truth_equals_their_get_mask(reference, fixture_records):
    """Union of the instance masks, ignore = ignore mask minus the union: their get_mask's
    ``foreground + 255 * ignore`` image, pixel for pixel (masks at the image's size, at 2x and at
    OpenImages' 1600-px scale, soft values 1 and 128, an image without foreground)."""
    theirs = reference["their_gt_masks"]
    assert len(fixture_records) == len(theirs) == 12
    for record, their_mask in zip(fixture_records, theirs):
        foreground, ignore = instance_ground_truth(record, 224)
        np.testing.assert_array_equal(foreground.astype(np.uint8) + 255 * ignore.astype(np.uint8), their_mask,
                                      err_msg=record.image_id)
    assert not instance_ground_truth(fixture_records[5], 224)[0].any()  # the image without foreground


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("interval, tag", [(0.001, "i001"), (0.01, "i01")])
def test_pxap_and_curve_equal_their_mask_evaluator(reference, tmp_path, dtype, interval, tag):
    """The command line on their file names and layout: PxAP, precision and recall bit for bit."""
    maps = write_choe_scoremaps(tmp_path / "maps", fixture_maps(), dtype)
    out = tmp_path / "eval.json"
    main(get_args_parser().parse_args([
        "--data-root", str(FIXTURES / "data"), "--metadata-root", str(FIXTURES / "metadata"),
        "--layout", "openimages", "--split", "val", "--scoremaps", str(maps), "--protocol", "wsol",
        "--cam-curve-interval", str(interval), "--output", str(out)]))
    res = json.loads(out.read_text())
    ref = {k.split("_", 2)[2]: reference[k] for k in reference.files if k.startswith(f"{dtype}_{tag}_")}
    assert res["pxap"] == float(ref["auc"])  # exactly
    precision = np.array([np.nan if v is None else v for v in res["curves"]["pxap_precision"]])
    np.testing.assert_array_equal(precision, ref["precision"])  # NaN where nothing scores that high
    np.testing.assert_array_equal(np.array(res["curves"]["pxap_recall"]), ref["recall"])
    thresholds = np.append(np.arange(0, 1, interval), [1.0, 2.0])[::-1]
    np.testing.assert_array_equal(res["curves"]["pxap_thresholds"], thresholds)
    assert res["num_images"] == 12 and res["num_images_without_foreground"] == 1
    assert "maxboxacc" not in res and "gt_known_loc" not in res and res["box_metrics"].startswith("not computed")


def test_histograms_and_per_image_pxap_equal_theirs(reference, fixture_records):
    maps = {k: v.astype(np.float64) for k, v in fixture_maps().items()}
    total = PxAPAccumulator(0.001)
    for k, record in enumerate(fixture_records):
        foreground, ignore = instance_ground_truth(record, 224)
        one = PxAPAccumulator(0.001)
        one.accumulate(maps[record.image_id], foreground, ignore)
        total.merge(one)
        their_auc = reference["float64_per_image_i001_auc"][k]
        if np.isnan(their_auc):  # theirs raises "No positive ground truth in the eval set."
            with pytest.raises(ValueError, match="no positive ground-truth pixel"):
                one.compute()
        else:
            assert one.compute()["pxap"] == their_auc, record.image_id
    np.testing.assert_array_equal(total.gt_true_score_hist, reference["float64_i001_gt_true_score_hist"])
    np.testing.assert_array_equal(total.gt_false_score_hist, reference["float64_i001_gt_false_score_hist"])


@pytest.mark.slow
def test_workers_agree_with_one_process(reference, fixture_records, tmp_path):
    maps = write_choe_scoremaps(tmp_path / "maps", fixture_maps(), "float64")
    one = evaluate_instance_masks(fixture_records, str(maps))
    assert evaluate_instance_masks(fixture_records, str(maps), workers=2) == one
    assert one["pxap"] == float(reference["float64_i001_auc"])


# ----------------------------------------------------------------------------- by hand
HAND_MAP = np.array([[.9, .8, .1, .95],
                     [.7, .6, .1, .95],
                     [.2, .2, .1, .95],
                     [.3, .1, .1, .15]])


def hand_tree(root, *, with_ignore=True, extra=()):
    m0 = np.zeros((4, 4), np.uint8)
    m0[0:2, 0:2] = 255
    m1 = np.zeros((4, 4), np.uint8)
    m1[3, 3] = 255
    ignore = np.zeros((4, 4), np.uint8)
    ignore[:, 3] = 255
    items = [("val/0a/a.jpg", 0, (4, 4), [m0, m1], ignore if with_ignore else None), *extra]
    return make_tiny_openimages(root, splits={"val": items})


def hand_pxap(root, maps, **kw):
    records = load_records(root, "openimages", "val")
    return evaluate_in_memory(records, maps, "wsol", input_size=4, **kw)


def test_ignored_pixels_leave_the_negatives_and_foreground_wins_over_ignore(tmp_path):
    res = hand_pxap(hand_tree(tmp_path / "a"), {"val/0a/a.jpg": HAND_MAP})
    # ranking .9 P, .8 P, .7 P, .6 P, .3 N, .2 N, .2 N, .15 P, .1 N...: precisions 1, 1, 1, 1, 5/8
    assert res["pxap"] == pytest.approx(100 * (1 + 1 + 1 + 1 + 5 / 8) / 5)  # 92.5
    assert res["num_ignored_pixels"] == 3  # (3, 3) is in the ignore mask but foreground
    # (had the ignore mask also removed (3, 3) from the positives, the ranking would be P P P P then N: 100)
    # the curve at score >= 0.55: 4 positives, no negative (the .95 are ignored)
    i = res["curves"]["pxap_thresholds"].index(0.55)
    assert (res["curves"]["pxap_precision"][i], res["curves"]["pxap_recall"][i]) == (1.0, 0.8)


def test_without_ignore_mask_those_pixels_are_negatives(tmp_path):
    res = hand_pxap(hand_tree(tmp_path / "b", with_ignore=False), {"val/0a/a.jpg": HAND_MAP})
    # ranking .95 N x3, .9 P, .8 P, .7 P, .6 P, .3 N, .2 N x2, .15 P: precisions 1/4, 2/5, 3/6, 4/7, 5/11
    assert res["pxap"] == pytest.approx(100 * (1 / 4 + 2 / 5 + 3 / 6 + 4 / 7 + 5 / 11) / 5)  # 43.52
    assert res["num_ignored_pixels"] == 0


def test_an_image_without_foreground_adds_negatives_only(tmp_path):
    # a second image, 8 x 8 with masks at 2x scale (16 x 16, all zero), map 0.85 everywhere:
    # 16 negatives tied at .85, between .9 and .8: .9 P rank 1, .85 N ranks 2-17, .8 .7 .6 P ranks 18-20,
    # .3 .2 .2 N ranks 21-23, .15 P rank 24 -> precisions 1, 2/18, 3/19, 4/20, 5/24
    root = hand_tree(tmp_path / "c", extra=[("val/1b/empty.jpg", 1, (8, 8), [np.zeros((16, 16), np.uint8)], None)])
    res = hand_pxap(root, {"val/0a/a.jpg": HAND_MAP, "val/1b/empty.jpg": np.full((4, 4), 0.85)})
    assert res["pxap"] == pytest.approx(100 * (1 + 2 / 18 + 3 / 19 + 4 / 20 + 5 / 24) / 5)  # 33.55
    assert res["num_images_without_foreground"] == 1 and res["num_images"] == 2


# ----------------------------------------------------------------------------- command line, errors
def run(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    return err


def test_command_line_says_box_metrics_are_not_computed(tmp_path, capsys):
    root = hand_tree(tmp_path / "d")
    maps = write_choe_scoremaps(tmp_path / "maps", {"val/0a/a.jpg": HAND_MAP}, "float64")
    out = tmp_path / "r.json"
    argv = ["--data-root", str(root), "--layout", "openimages", "--split", "val", "--scoremaps", str(maps),
            "--input-size", "4", "--output", str(out)]
    res = cli(argv + ["--protocol", "wsol"])
    table = capsys.readouterr().out
    assert "PxAP         92.50" in table and "box metrics  not computed: OpenImages30k has instance masks" in table
    assert "MaxBoxAcc" not in table and "GT-known" not in table and out.with_suffix(".txt").read_text() == table
    assert res["pxap"] == pytest.approx(92.5) and json.loads(out.read_text())["pxap"] == res["pxap"]
    assert "--threshold / --predictions are for box metrics" in run(argv + ["--protocol", "wsol", "--threshold", "0.5"], capsys)
    assert "use --protocol wsol (resize)" in run(argv + ["--protocol", "spol", "--threshold", "0.5"], capsys)
    # the train split has no masks: an error, never a table of zeros
    train = make_tiny_openimages(tmp_path / "e")
    err = run(["--data-root", str(train), "--layout", "openimages", "--split", "train", "--scoremaps", str(maps),
               "--protocol", "wsol", "--output", str(out)], capsys)
    assert "t_0001.jpg: image train/0a/t_0001.jpg has no instance mask" in err


def test_command_line_bad_mask_is_one_error_line(tmp_path, capsys):
    root = hand_tree(tmp_path / "f")
    (root / "val/0a/a_m1.png").unlink()
    maps = write_choe_scoremaps(tmp_path / "maps", {"val/0a/a.jpg": HAND_MAP}, "float64")
    err = run(["--data-root", str(root), "--layout", "openimages", "--split", "val", "--scoremaps", str(maps),
               "--protocol", "wsol", "--input-size", "4", "--output", str(tmp_path / "r.json")], capsys)
    assert "metadata/val/localization.txt:2: mask" in err and err.rstrip().endswith("a_m1.png not found")
    assert not (tmp_path / "r.json").exists()


def test_missing_score_map_and_map_of_the_wrong_size(tmp_path):
    root = hand_tree(tmp_path / "g")
    records = load_records(root, "openimages", "val")
    with pytest.raises(DataError, match=r"a\.npy: score map not found"):
        evaluate_instance_masks(records, tmp_path / "nomaps", input_size=4)
    with pytest.raises(DataError, match="input size"):
        evaluate_in_memory(records, {"val/0a/a.jpg": np.zeros((5, 5))}, "wsol", input_size=4)
