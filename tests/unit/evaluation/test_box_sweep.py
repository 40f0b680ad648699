"""utils.evaluation.box_sweep: Choe et al.'s contour boxes at every level from the component trees, against
cv2.findContours level by level (the reference loop) on hand-built maps worked out in the comments
and on many random maps of different kinds."""
import cv2
import numpy as np
import pytest

from utils.evaluation.box_sweep import ComponentTree, _Scan, contour_boxes, contours_at, euler_numbers, level_boxes
from utils.evaluation.metrics import best_iou_per_threshold, cam_threshold_list, reference_best_iou_per_threshold

ALL_LEVELS = np.arange(255)


def boxes_at(u, level, multi, **kw):
    boxes, index = level_boxes(u, ALL_LEVELS, (multi,), **kw)[multi]
    return boxes[index == level].tolist()


def cv2_boxes_at(u, level, multi):
    return contour_boxes(contours_at(u, level), u.shape[1], u.shape[0], (multi,))[multi].tolist()


def assert_same_as_cv2(u, **kw):
    """Every level's boxes equal cv2's: the largest contour's box exactly, every contour's boxes as
    a multiset (their order does not change a max IoU); each mode alone and both together."""
    ref = [contour_boxes(contours_at(u, int(level)), u.shape[1], u.shape[0], (False, True)) for level in ALL_LEVELS]
    for modes in ((False,), (True,), (False, True)):
        got = level_boxes(u, ALL_LEVELS, modes, **kw)
        for m in modes:
            boxes, index = got[m]
            order = np.argsort(index, kind="stable")
            per_level = np.split(boxes[order].tolist(), np.searchsorted(index[order], ALL_LEVELS[1:]))
            for level, mine in zip(ALL_LEVELS, per_level):
                expected = ref[level][m].tolist()
                mine = [list(b) for b in mine]
                if m:
                    assert sorted(mine) == sorted(expected), (u.shape, level, modes, m)
                else:
                    assert mine == expected, (u.shape, level, modes, m)


# ----------------------------------------------------------------------------- hand-built maps
def test_a_hole_box_can_beat_every_outer_box():
    # 16 x 16 map, a square ring (rows/cols 1..14) with walls 3 pixels thick: hole rows/cols 4..11.
    # Outer contour: boundingRect (1, 1, 14, 14) -> [1, 1, min(15, 15), 15] = [1, 1, 15, 15] (225 px).
    # Hole contour: through the wall pixels around the hole, 3..12 -> (3, 3, 10, 10) -> [3, 3, 13, 13]
    # (121 px). GT = the hole [4, 4, 11, 11] (64 px): IoU 64 / 121 with the hole's box, 64 / 225 with
    # the outer one. Only the hole contour's box reaches 0.529 (MaxBoxAccV2 counts it at IoU 0.5).
    m = np.zeros((16, 16))
    m[1:15, 1:15] = 1.0
    m[4:12, 4:12] = 0.0
    u = (m * 255).astype(np.uint8)
    assert sorted(boxes_at(u, 0, True)) == [[1, 1, 15, 15], [3, 3, 13, 13]]
    assert boxes_at(u, 0, False) == [[1, 1, 15, 15]]
    gt = np.array([[4, 4, 11, 11]])
    thresholds = cam_threshold_list(0.01)
    ious = best_iou_per_threshold(m, gt, thresholds, (False, True))
    assert np.all(ious[True] == 64 / 121) and np.all(ious[False] == 64 / 225)
    for multi in (False, True):
        assert np.array_equal(ious[multi], reference_best_iou_per_threshold(m, gt, thresholds, multi))


def test_holes_are_four_connected_and_a_diagonal_gap_opens_them():
    # 7 x 7 ring of 1-pixel walls (rows/cols 1..5) around a 3 x 3 hole: one hole contour, box of the
    # hole (2..4) grown by one -> (1, 1, 5, 5) -> [1, 1, 6, 6], the outer contour's box too.
    u = np.zeros((7, 7), np.uint8)
    u[1:6, 1:6] = 200
    u[2:5, 2:5] = 0
    assert sorted(boxes_at(u, 0, True)) == [[1, 1, 6, 6], [1, 1, 6, 6]]
    # remove the corner (1, 1): the hole's pixel (2, 2) now touches the outside only diagonally,
    # which does not join 4-connected background: still a hole
    u[1, 1] = 0
    assert len(boxes_at(u, 0, True)) == 2
    # remove (1, 2) as well: the hole opens through a 4-connected gap -> one contour only
    u[1, 2] = 0
    assert boxes_at(u, 0, True) == [[1, 1, 6, 6]]
    assert_same_as_cv2(u)


def test_largest_contour_is_by_polygon_area_not_pixel_count():
    # A line of 12 pixels (row 1) has contour area 0; a 2 x 2 block (rows 4-5, cols 3-4) has area 1:
    # the block wins, boundingRect (3, 4, 2, 2) -> [3, 4, 5, 6].
    u = np.zeros((8, 12), np.uint8)
    u[1, :] = 90
    u[4:6, 3:5] = 90
    assert boxes_at(u, 0, False) == [[3, 4, 5, 6]] == cv2_boxes_at(u, 0, False)


def test_equal_areas_go_to_the_component_whose_first_pixel_comes_last():
    # Two 3 x 3 squares, contour area 4 each: B (rows 1-3, cols 6-8) starts first in raster order,
    # A (rows 5-7, cols 1-3) later. cv2 lists the outermost contours in reverse order of their first
    # pixel, so its list is [A, B] and max() keeps A: boundingRect (1, 5, 3, 3) -> [1, 5, 4, 8].
    u = np.zeros((10, 10), np.uint8)
    u[5:8, 1:4] = 255
    u[1:4, 6:9] = 255
    assert boxes_at(u, 0, False) == [[1, 5, 4, 8]] == cv2_boxes_at(u, 0, False)
    # single pixels and lines all have area 0: the last first pixel wins among them too
    u = np.zeros((6, 9), np.uint8)
    u[0, 7] = u[2, 1] = u[4, 4] = 255
    u[1, 2:5] = 255
    assert boxes_at(u, 0, False) == cv2_boxes_at(u, 0, False) == [[4, 4, 5, 5]]


def test_a_ring_outweighs_a_solid_square_through_its_hole():
    # Ring of 1-pixel walls, pixels rows/cols 1..9: its outer contour encloses 8 x 8 = 64.
    # Solid 6 x 6 square (rows 2-7, cols 12-17): 5 x 5 = 25. Counting the ring's own pixels only
    # (2 x 2 windows with 3 or 4 of them: the 4 corners, 1/2 each) gives 2, so the hole must be
    # accounted for: the ring wins, boundingRect (1, 1, 9, 9) -> [1, 1, 10, 10].
    u = np.zeros((12, 20), np.uint8)
    u[1:10, 1:10] = 255
    u[2:9, 2:9] = 0
    u[2:8, 12:18] = 255
    assert boxes_at(u, 0, False) == [[1, 1, 10, 10]] == cv2_boxes_at(u, 0, False)
    assert sorted(boxes_at(u, 0, True)) == sorted(cv2_boxes_at(u, 0, True))


def test_thresholds_are_strict_and_levels_follow_the_map():
    # values 10, 20, 30 in three nested squares; u > L keeps 30 only for L in 20..29, 20 and 30 for
    # L in 10..19, everything non-zero below 10; nothing at L >= 30 (placeholder box).
    u = np.zeros((9, 9), np.uint8)
    u[1:8, 1:8] = 10
    u[2:7, 2:7] = 20
    u[3:6, 3:6] = 30
    assert boxes_at(u, 9, False) == [[1, 1, 8, 8]]
    assert boxes_at(u, 10, False) == boxes_at(u, 19, False) == [[2, 2, 7, 7]]
    assert boxes_at(u, 20, False) == boxes_at(u, 29, False) == [[3, 3, 6, 6]]
    assert boxes_at(u, 30, True) == boxes_at(u, 254, False) == [[0, 0, 0, 0]]
    assert_same_as_cv2(u)


def test_blank_constant_and_border_touching_maps():
    assert boxes_at(np.zeros((5, 7), np.uint8), 0, True) == [[0, 0, 0, 0]]
    full = np.full((5, 7), 3, np.uint8)  # the whole map: boundingRect (0, 0, 7, 5) -> [0, 0, 6, 4]
    assert boxes_at(full, 0, False) == boxes_at(full, 2, True) == [[0, 0, 6, 4]]
    assert boxes_at(full, 3, False) == [[0, 0, 0, 0]]
    for u in (full, np.full((1, 1), 9, np.uint8), np.full((1, 6), 9, np.uint8), np.full((6, 1), 9, np.uint8)):
        assert_same_as_cv2(u)


def test_euler_numbers_by_hand():
    ring = np.zeros((5, 5), np.uint8)
    ring[1:4, 1:4] = 1
    ring[2, 2] = 0
    assert euler_numbers(ring)[0] == 0           # 1 component - 1 hole
    ring[2, 2] = 2                               # a pixel of value 2 in the hole
    e = euler_numbers(ring)
    assert e[0] == 1 and e[1] == 1               # L = 0: ring filled, 1 - 0; L = 1: the pixel alone
    diagonal = np.array([[1, 0], [0, 1]], np.uint8)
    assert euler_numbers(diagonal)[0] == 1       # 8-connected: one component, no hole
    assert euler_numbers(np.zeros((3, 3), np.uint8))[0] == 0


def test_component_tree_of_two_peaks_by_hand():
    # 1 x 7 row: 5 9 5 1 6 8 6. Components of u > L: L 0: one (all pixels); L 1..4: the left
    # (0-2) and right (4-6) bumps; L 5: pixel 1 and pixels 4-6; L 6, 7: pixel 1 and pixel 5;
    # L 8: pixel 1; L >= 9: none.
    u = np.array([[5, 9, 5, 1, 6, 8, 6]], np.uint8)
    tree = ComponentTree(_Scan(u), 8)
    assert tree.count[:11].tolist() == [1, 2, 2, 2, 2, 2, 2, 2, 1, 0, 0]
    spans = sorted((int(L), int(a), int(b)) for L, a, b in zip(tree.level, tree.x0, tree.x1) if L in (0, 5, 7))
    assert spans == [(0, 0, 6), (5, 1, 1), (5, 4, 6), (7, 1, 1), (7, 5, 5)]


def test_bad_input_is_rejected():
    with pytest.raises(ValueError):
        level_boxes(np.zeros((3, 3)), [0], (False,))
    with pytest.raises(ValueError):
        level_boxes(np.zeros((3, 3), np.uint8), [0, 0], (False,))
    with pytest.raises(ValueError):
        level_boxes(np.zeros((3, 3), np.uint8), [256], (False,))


# ----------------------------------------------------------------------------- random maps
def random_map(rng, kind):
    h, w = (int(v) for v in rng.integers(1, 40, 2))
    if kind == "noise":
        return rng.integers(0, 256, (h, w)).astype(np.uint8)
    if kind == "plateaus":
        return (rng.integers(0, 4, (h, w)) * 60).astype(np.uint8)
    if kind == "smooth":
        k = int(rng.integers(2, 7))
        return cv2.resize(rng.integers(0, 256, (k, k)).astype(np.float32), (w, h)).astype(np.uint8)
    if kind == "rings":
        yy, xx = np.mgrid[:h, :w]
        r = np.hypot(yy - rng.uniform(0, h), xx - rng.uniform(0, w))
        return (127 + 127 * np.sin(r / rng.uniform(0.5, 4))).astype(np.uint8)
    if kind == "pixels":
        u = np.zeros((h, w), np.uint8)
        on = rng.random((h, w)) < 0.1
        u[on] = rng.integers(1, 256, int(on.sum()))
        return u
    if kind == "constant":
        return np.full((h, w), rng.integers(0, 256), np.uint8)
    if kind == "binary":
        return (rng.random((h, w)) < rng.uniform(0.2, 0.8)).astype(np.uint8) * int(rng.integers(1, 256))
    raise ValueError(kind)


KINDS = ("noise", "plateaus", "smooth", "rings", "pixels", "constant", "binary")


def check_random_maps(kind, count, seed):
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    for i in range(count):
        u = random_map(rng, kind)
        assert_same_as_cv2(u)
        if i % 4 == 0:
            assert_same_as_cv2(u, max_regions=0)  # the level-by-level path of large noisy maps


@pytest.mark.parametrize("kind", KINDS)
def test_boxes_equal_cv2_at_every_level_on_random_maps(kind):
    check_random_maps(kind, 3, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_boxes_equal_cv2_at_every_level_on_more_random_maps(kind):
    check_random_maps(kind, 30, seed=1)


def check_random_score_maps(count, seed):
    # float maps as the evaluator gets them: smooth blobs with and without noise, rings, plateaus,
    # non-square, a few values only, all zero; every threshold of Choe et al.'s default interval
    rng = np.random.default_rng(seed)
    thresholds = cam_threshold_list(0.001)
    for i in range(count):
        h, w = (int(v) for v in rng.integers(8, 48, 2))
        yy, xx = np.mgrid[:h, :w]
        m = np.zeros((h, w))
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            s = rng.uniform(2, max(h, w) / 3)
            m += rng.uniform(0.2, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
        if i % 4 == 1:
            m += rng.uniform(0, 0.4) * rng.random((h, w))
        if i % 4 == 2:
            m = np.abs(np.sin(m * rng.uniform(5, 20)))
        if i % 4 == 3:
            m = np.round(m * 5)
        m = (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else np.zeros_like(m)
        xy = rng.integers(0, min(h, w) // 2, (2, 2))
        gt = np.concatenate([xy, xy + rng.integers(1, min(h, w) // 2 + 1, (2, 2))], 1)
        fast = best_iou_per_threshold(m, gt, thresholds, (False, True))
        for multi in (False, True):
            assert np.array_equal(fast[multi], reference_best_iou_per_threshold(m, gt, thresholds, multi)), (i, multi)


def test_sweep_equals_reference_loop_on_random_score_maps():
    check_random_score_maps(4, seed=7)


@pytest.mark.slow
def test_sweep_equals_reference_loop_on_more_random_score_maps():
    check_random_score_maps(24, seed=8)
