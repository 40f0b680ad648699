"""utils.evaluation.metrics on hand-built boxes and maps whose answers are worked out in the comments."""
import numpy as np
import pytest
import torch
import torchvision

from utils.errors import DataError
from utils.evaluation.metrics import (BoxAccumulator, LocalizationMeter, PxAPAccumulator, best_iou_per_threshold,
                           box_iou, cam_threshold_list, check_scoremap_validity,
                           reference_best_iou_per_threshold)


# ----------------------------------------------------------------------------- IoU
def test_box_iou_inclusive_vs_exclusive_by_hand():
    a = np.array([[0, 0, 9, 9]])
    b = np.array([[5, 0, 14, 9]])
    # inclusive: both 10x10 = 100 px; overlap x 5..9 (5) x y 0..9 (10) = 50; union 150 -> 1/3
    assert box_iou(a, b, inclusive=True)[0, 0] == pytest.approx(1 / 3)
    # exclusive: areas 9*9 = 81; overlap (9-5) * 9 = 36; union 126 -> 2/7
    assert box_iou(a, b, inclusive=False)[0, 0] == pytest.approx(36 / 126)
    # disjoint and touching boxes: inclusive [0,0,4,4] and [5,0,9,4] share no pixel -> 0
    assert box_iou([[0, 0, 4, 4]], [[5, 0, 9, 4]], inclusive=True)[0, 0] == 0.0
    # degenerate pair (exclusive zero-area boxes): 0, not NaN
    assert box_iou([[3, 3, 3, 3]], [[3, 3, 3, 3]], inclusive=False)[0, 0] == 0.0


def test_box_iou_exclusive_equals_torchvision_and_shapes():
    g = torch.Generator().manual_seed(0)
    xy = torch.randint(0, 50, (7, 2), generator=g).float()
    a = torch.cat([xy, xy + torch.randint(1, 40, (7, 2), generator=g)], 1)
    xy = torch.randint(0, 50, (5, 2), generator=g).float()
    b = torch.cat([xy, xy + torch.randint(1, 40, (5, 2), generator=g)], 1)
    ours = box_iou(a, b, inclusive=False)
    assert isinstance(ours, torch.Tensor) and ours.shape == (7, 5)
    assert torch.allclose(ours, torchvision.ops.box_iou(a, b), atol=1e-6)
    assert box_iou(a.numpy(), b.numpy(), inclusive=True).shape == (7, 5)


# ----------------------------------------------------------------------------- meter
def test_iou_exactly_half_counts_with_ge_not_with_gt():
    pred = np.array([[0, 0, 9, 9]])        # 100 px inclusive
    gt = [np.array([[0, 0, 19, 9]])]       # 200 px, overlap 100 -> IoU = 100 / 200 = 0.5 exactly
    ge = LocalizationMeter(0.5, ">=")
    ge.update(pred, gt)
    assert ge.compute()["gt_known_loc"] == 100.0
    gt_strict = LocalizationMeter(0.5, ">")
    gt_strict.update(pred, gt)
    assert gt_strict.compute()["gt_known_loc"] == 0.0
    # exclusive convention: 9*9 / (19*9) = 0.4737 -> a miss even with >=
    ex = LocalizationMeter(0.5, ">=", inclusive_iou=False)
    ex.update(pred, gt)
    assert ex.compute()["gt_known_loc"] == 0.0
    with pytest.raises(ValueError):
        LocalizationMeter(0.5, "=>")


def test_meter_misses_stay_in_the_denominator_and_best_box_wins():
    m = LocalizationMeter()
    preds = [np.array([[0, 0, 0, 0]]),                      # no-foreground sentinel -> miss
             np.array([[20, 20, 29, 29]]),                  # matches the 2nd GT box exactly -> hit
             np.array([[0, 0, 9, 9]]),                      # image without GT box left -> miss
             np.zeros((0, 4)),                              # no predicted box -> miss
             np.array([[50, 50, 60, 60], [0, 0, 9, 9]])]    # 2 predicted boxes, the 2nd hits
    gts = [np.array([[0, 0, 1, 1]]),
           np.array([[0, 0, 9, 9], [20, 20, 29, 29]]),
           np.zeros((0, 4)),
           np.array([[0, 0, 9, 9]]),
           np.array([[0, 0, 9, 9]])]
    hits = m.update(preds, gts)
    assert hits.tolist() == [False, True, False, False, True]
    out = m.compute()
    # 2 hits out of 5 images = 40 %
    assert out["num_images"] == 5 and out["gt_known_loc"] == pytest.approx(40.0)
    assert out["top1_loc"] is None and out["top5_loc"] is None


def test_top1_top5_loc_combinations_and_merge():
    # 4 images: loc hit/miss x classification flags
    #   img0: loc hit,  top1 ok,  top5 ok   -> top1 loc, top5 loc
    #   img1: loc hit,  top1 bad, top5 ok   -> top5 loc only
    #   img2: loc hit,  top1 bad, top5 bad  -> gt-known only
    #   img3: loc miss, top1 ok,  top5 ok   -> nothing
    box = np.array([0, 0, 9, 9])
    far = np.array([30, 30, 39, 39])
    preds = np.stack([box, box, box, far])
    gts = [box[None]] * 4
    a, b = LocalizationMeter(), LocalizationMeter()
    a.update(preds[:2], gts[:2], top1_correct=[1, 0], top5_correct=[1, 1])
    b.update(preds[2:], gts[2:], top1_correct=torch.tensor([False, True]), top5_correct=torch.tensor([False, True]))
    a.merge(b.state())
    out = a.compute()
    # gt-known 3/4 = 75; top1 1/4 = 25; top5 2/4 = 50
    assert out == {"gt_known_loc": 75.0, "top1_loc": 25.0, "top5_loc": 50.0, "num_images": 4}
    c = LocalizationMeter()
    c.update(preds[:1], gts[:1], top1_correct=[1], top5_correct=[1])
    c.update(preds[1:2], gts[1:2])  # no flags for this image: top-k Loc is undefined
    with pytest.raises(ValueError):
        c.compute()


# ----------------------------------------------------------------------------- MaxBoxAcc
def two_level_map(outer_value):
    """10x10 map: outer 8x8 block (rows/cols 0-7) at ``outer_value``, inner 4x4 (2-5) at 1.0."""
    m = np.zeros((10, 10))
    m[0:8, 0:8] = outer_value
    m[2:6, 2:6] = 1.0
    return m


def test_maxboxacc_three_tiny_maps_best_threshold_by_hand():
    # Boxes: outer block -> boundingRect (0,0,8,8) -> [0,0,8,8]; inner -> [2,2,6,6].
    # A: outer 0.5 (uint8 127): level int(t*255) <= 126 for t <= 0.498 -> outer box;
    #    t >= 0.499 (127.245 -> 127, and 127 > 127 is false) -> inner box.
    # B: outer 0.75 (uint8 int(191.25) = 191): t <= 0.749 (190.995) -> outer; t >= 0.750 -> inner.
    # C: inner block only -> inner box at every threshold.
    # GT: A [2,2,5,5], B [0,0,7,7], C [2,2,5,5]. Inclusive IoUs:
    #   inner [2,2,6,6] (25 px) vs [2,2,5,5] (16 px): 16/25 = 0.64
    #   outer [0,0,8,8] (81 px) vs [0,0,7,7] (64 px): 64/81 = 0.790
    #   outer vs [2,2,5,5]: 16/81 = 0.198;   inner vs [0,0,7,7]: 25/64 = 0.391
    # IoU 50:  t <= 0.498: A miss, B hit, C hit  -> 66.67
    #          0.499..0.749: A hit, B hit, C hit -> 100   (best, first at t = 0.499)
    #          t >= 0.750: A hit, B miss, C hit  -> 66.67
    # IoU 70: only B's outer box (0.79) passes: t <= 0.749 -> 33.33, then 0.
    # IoU 30: A passes from 0.499 (0.64), B always (0.79 or 0.391), C always -> 100 from 0.499.
    maps = [two_level_map(0.5), two_level_map(0.75), two_level_map(0.0)]
    gts = [np.array([[2, 2, 5, 5]]), np.array([[0, 0, 7, 7]]), np.array([[2, 2, 5, 5]])]
    for fast in (True, False):
        acc = BoxAccumulator(0.001, iou_thresholds=(30, 50, 70), multi_contour=False, fast=fast)
        for m, g in zip(maps, gts):
            acc.accumulate(m, g)
        out = acc.compute()
        curve = out["curve"][50]
        assert len(curve) == 1000 and out["num_images"] == 3
        assert curve[0] == pytest.approx(200 / 3) and curve[498] == pytest.approx(200 / 3)
        assert curve[499] == 100.0 and curve[749] == 100.0
        assert curve[750] == pytest.approx(200 / 3) and curve[999] == pytest.approx(200 / 3)
        assert out["max_box_acc"][50] == 100.0
        assert out["best_threshold_index"][50] == 499 and out["best_threshold"][50] == pytest.approx(0.499)
        assert out["max_box_acc"][70] == pytest.approx(100 / 3) and out["best_threshold_index"][70] == 0
        assert out["curve"][70][750] == 0.0
        assert out["max_box_acc"][30] == 100.0 and out["best_threshold_index"][30] == 499
        assert out["mean_max_box_acc"] == pytest.approx((100 + 100 + 100 / 3) / 3)


def test_maxboxacc_v2_second_contour_matters():
    m = np.zeros((12, 12))
    m[0:6, 0:6] = 1.0    # large blob, away from the object
    m[8:11, 8:11] = 1.0  # small blob on the object
    gt = np.array([[8, 8, 10, 10]])  # 9 px inclusive
    # largest contour: [0,0,6,6] does not overlap the GT -> IoU 0 at every threshold
    # all contours: the small blob's box [8,8,11,11] (16 px) contains the GT: IoU 9/16 = 0.5625
    #   -> correct at IoU 30 and 50, not at 70
    largest = BoxAccumulator(0.01, iou_thresholds=(50,), multi_contour=False)
    largest.accumulate(m, gt)
    assert largest.compute()["max_box_acc"][50] == 0.0
    v2 = BoxAccumulator(0.01)  # defaults: (30, 50, 70), multi_contour=True
    v2.accumulate(m, gt)
    out = v2.compute()
    assert out["max_box_acc"] == {30: 100.0, 50: 100.0, 70: 0.0}
    assert out["mean_max_box_acc"] == pytest.approx(200 / 3)
    ious = best_iou_per_threshold(m, gt, cam_threshold_list(0.01), (False, True))
    assert np.all(ious[False] == 0.0) and np.allclose(ious[True], 9 / 16)


def test_empty_map_and_image_without_gt_are_counted_misses():
    acc = BoxAccumulator(0.1, iou_thresholds=(50,), multi_contour=False)
    acc.accumulate(np.zeros((8, 8)), np.array([[0, 0, 3, 3]]))   # box [0,0,0,0]: IoU 1/16 -> miss
    full = np.zeros((8, 8))
    full[0:4, 0:4] = 1.0                                         # box [0,0,4,4] vs [0,0,3,3]: 16/25
    acc.accumulate(full, np.array([[0, 0, 3, 3]]))
    acc.accumulate(full, np.zeros((0, 4)))                       # no GT box -> miss
    out = acc.compute()
    assert out["num_images"] == 3
    assert np.allclose(out["curve"][50], 100 / 3)


def smooth_map(rng, size, noise=0.0):
    yy, xx = np.mgrid[:size, :size]
    m = np.zeros((size, size))
    for _ in range(rng.integers(1, 4)):
        cx, cy = rng.uniform(0, size, 2)
        s = rng.uniform(size / 20, size / 4)
        m += rng.uniform(0.3, 1.0) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
    m += rng.uniform(0, noise, m.shape)
    return ((m - m.min()) / (m.max() - m.min())).astype(np.float32)


def test_fast_sweep_equals_reference_loop_on_random_maps():
    rng = np.random.default_rng(0)
    cases = [(0.001, 32, 0.0), (0.001, 24, 0.3), (0.01, 40, 0.0), (0.01, 40, 0.5), (0.003, 33, 0.05)]
    for interval, size, noise in cases:
        thresholds = cam_threshold_list(interval)
        m = smooth_map(rng, size, noise)
        if noise == 0.5:
            m = np.round(m * 20) / 20  # few distinct values: many thresholds share a binary map
        xy = rng.integers(0, size // 2, (2, 2))
        gt = np.concatenate([xy, xy + rng.integers(2, size // 2, (2, 2))], 1)
        fast = best_iou_per_threshold(m, gt, thresholds, (False, True))
        for multi in (False, True):
            ref = reference_best_iou_per_threshold(m, gt, thresholds, multi)
            assert np.array_equal(fast[multi], ref), (interval, size, noise, multi)


def test_box_accumulator_merge_and_validation():
    a = BoxAccumulator(0.1, iou_thresholds=(50,), multi_contour=False)
    b = BoxAccumulator(0.1, iou_thresholds=(50,), multi_contour=False)
    m = two_level_map(0.5)
    a.accumulate(m, np.array([[0, 0, 7, 7]]))
    b.accumulate(m, np.array([[2, 2, 5, 5]]))
    a.merge(b.state())
    # thresholds 0.0..0.4 (levels <= 102 < 127): outer box -> image 1 hits, image 2 misses: 50 %
    # thresholds 0.5..0.9 (levels >= 127): inner box -> image 1 misses (0.39), image 2 hits: 50 %
    assert a.compute()["num_images"] == 2 and np.allclose(a.compute()["curve"][50], 50.0)
    with pytest.raises(DataError, match="x.npy"):
        a.accumulate(m * 2, np.array([[0, 0, 7, 7]]), path="x.npy")


# ----------------------------------------------------------------------------- PxAP
def direct_average_precision(scores, labels):
    """AP by ranking pixels (no ties): mean over positives of the precision at their rank."""
    order = np.argsort(-scores, kind="stable")
    lab = labels[order]
    tp = np.cumsum(lab)
    return 100 * np.sum((tp / np.arange(1, len(lab) + 1))[lab == 1]) / lab.sum()


def test_pxap_2x2_by_hand():
    scoremap = np.array([[0.9, 0.6], [0.3, 0.1]])
    gt = np.array([[1, 0], [1, 0]])
    # interval 0.25: edges [0, .25, .5, .75, 1, 2, 3]; fg scores .9 (bin 3), .3 (bin 1);
    # bg .6 (bin 2), .1 (bin 0). Reversed cumsums: tp = [0,0,1,1,2,2], fp = [0,0,0,1,1,2]
    # precision = [nan, nan, 1, 1/2, 2/3, 1/2], recall = [0, 0, .5, .5, 1, 1]
    # sum(precision[1:] * diff(recall)) over defined points = 1 * .5 + 2/3 * .5 = 5/6 -> 83.33
    # ranking view: fg at rank 1 (precision 1) and rank 3 (2/3): AP = (1 + 2/3) / 2, the same
    for interval in (0.25, 0.001):
        acc = PxAPAccumulator(interval)
        with np.errstate(all="raise"):  # no divide-by-zero warning escapes
            acc.accumulate(scoremap, gt)
            out = acc.compute()
        assert out["pxap"] == pytest.approx(250 / 3)
    assert direct_average_precision(scoremap.ravel(), gt.ravel()) == pytest.approx(250 / 3)
    # raw grayscale masks: any value > 0.5 is foreground (1 and 255 alike)
    raw = PxAPAccumulator(0.25)
    raw.accumulate(scoremap, np.array([[255, 0], [1, 0]], np.uint8))
    assert raw.compute()["pxap"] == pytest.approx(250 / 3)
    # ignoring the bg pixel scored .6: the ranking is fg, fg, bg -> AP 100
    ign = PxAPAccumulator(0.25)
    ign.accumulate(scoremap, gt, ignore_mask=np.array([[0, 1], [0, 0]]))
    assert ign.compute()["pxap"] == pytest.approx(100.0)


def test_pxap_matches_direct_ranking_and_merges():
    rng = np.random.default_rng(1)
    # distinct bins: scores k/1000 + 0.0005 with distinct k, so no two pixels tie in a bin
    k = rng.permutation(1000)[:64]
    maps = (k / 1000 + 0.0005).reshape(2, 4, 8)
    masks = rng.random((2, 4, 8)) < 0.4
    a, b = PxAPAccumulator(0.001), PxAPAccumulator(0.001)
    a.accumulate(maps[0], masks[0])
    b.accumulate(maps[1], masks[1])
    a.merge(b)
    assert a.compute()["pxap"] == pytest.approx(direct_average_precision(maps.ravel(), masks.ravel().astype(int)))
    with pytest.raises(ValueError, match="positive ground-truth"):
        empty = PxAPAccumulator(0.1)
        empty.accumulate(maps[0], np.zeros((4, 8)))
        empty.compute()


# ----------------------------------------------------------------------------- validity
@pytest.mark.parametrize("bad, what", [
    (np.zeros((2, 3, 4)), "2-D"),
    (np.array([[0.5, np.nan]]), "NaN"),
    (np.array([[0.5, np.inf]]), "NaN or inf"),
    (np.array([[0.5, 1.2]]), r"\[0, 1\]"),
    (np.array([[-0.1, 0.5]]), r"\[0, 1\]"),
    ([[0.1, 0.2]], "numpy array"),
])
def test_check_scoremap_validity_names_the_file(bad, what):
    with pytest.raises(DataError, match=r"^maps/a\.npy: .*" + what):
        check_scoremap_validity(bad, "maps/a.npy")


def test_check_scoremap_validity_accepts_valid_maps():
    check_scoremap_validity(np.array([[0.0, 1.0]], np.float32), "ok.npy")
    check_scoremap_validity(np.zeros((3, 3)), "ok.npy")


def test_box_accumulator_counts_iou_exactly_at_the_threshold():
    m = np.zeros((20, 20))
    m[0:10, 0:10] = 1.0  # boundingRect (0, 0, 10, 10) -> box [0, 0, 10, 10], 11 x 11 = 121 px inclusive
    # GT [0, 0, 10, 21]: 11 x 22 = 242 px containing the box: IoU = 121 / 242 = 0.5 exactly
    acc = BoxAccumulator(0.5, iou_thresholds=(50,), multi_contour=False)
    acc.accumulate(m, np.array([[0, 0, 10, 21]]))
    assert np.array_equal(acc.compute()["curve"][50], [100.0, 100.0])  # Choe et al. compare with >=
