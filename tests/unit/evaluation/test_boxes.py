"""utils.evaluation.boxes: normalisation, resizing and the two named box rules, on hand-built maps."""
import numpy as np
import pytest
import torch

from utils.evaluation.boxes import (boxes_from_contours, boxes_from_maps, boxes_from_maps_zhou,
                       normalize_max, normalize_minmax, quantize_scoremap, resize_maps)


def test_normalize_minmax_numpy_and_torch():
    x = np.array([[[0., 2.], [4., 2.]], [[3., 3.], [3., 3.]], [[np.nan, 1.], [0., 2.]]])
    # map 0: (x - 0) / 4; map 1 constant -> zeros; map 2 has a NaN -> zeros (never NaN)
    expected = np.array([[[0., .5], [1., .5]], [[0., 0.], [0., 0.]], [[0., 0.], [0., 0.]]])
    out = normalize_minmax(x)
    assert np.array_equal(out, expected)
    out_t = normalize_minmax(torch.from_numpy(x).float())
    assert isinstance(out_t, torch.Tensor) and torch.equal(out_t, torch.from_numpy(expected).float())
    assert np.array_equal(normalize_minmax(np.array([[1., 5.]])), np.array([[0., 1.]]))  # one 2-D map


def test_normalize_max():
    x = torch.tensor([[[0., 2.], [4., 2.]]])
    assert torch.allclose(normalize_max(x, eps=0.0), torch.tensor([[[0., .5], [1., .5]]]))
    assert torch.equal(normalize_max(torch.zeros(1, 2, 2)), torch.zeros(1, 2, 2))  # 0 / (0 + eps)


def test_resize_maps_bilinear():
    x = torch.tensor([[[0., 1.], [0., 1.]]])
    out = resize_maps(x, 4)
    assert out.shape == (1, 4, 4)
    # align_corners=False: output x centres at 0.125, 0.375, 0.625, 0.875 of the input width
    # -> source coords -0.25 (clamped 0), 0.25, 0.75, 1.25 (clamped 1) -> values 0, .25, .75, 1
    assert torch.allclose(out[0, 0], torch.tensor([0., .25, .75, 1.]))
    assert resize_maps(x, (3, 5)).shape == (1, 3, 5)


def test_choe_box_rule_single_block_and_right_edge_clamp():
    m = np.zeros((6, 8))
    m[1:3, 2:5] = 1.0  # rows 1-2, cols 2-4: boundingRect x=2, y=1, w=3, h=2
    assert boxes_from_maps(m, 0.5)[0].tolist() == [[2, 1, 5, 3]]  # x1 = x + w, y1 = y + h
    m = np.zeros((6, 8))
    m[1:3, 5:8] = 1.0  # x=5, w=3 -> x + w = 8 clamped to W - 1 = 7
    assert boxes_from_maps(m, 0.5)[0].tolist() == [[5, 1, 7, 3]]


def test_choe_threshold_is_strict_and_relative_to_uint8_max():
    m = np.zeros((5, 5))
    m[1, 1] = 0.5   # uint8 int(127.5) = 127
    m[3, 3] = 1.0   # uint8 255
    assert quantize_scoremap(m)[1, 1] == 127
    # t = 0.5: thr = int(0.5 * 255) = 127; 127 > 127 is false -> only the pixel (3, 3)
    assert boxes_from_maps(m, 0.5)[0].tolist() == [[3, 3, 4, 4]]
    # same map scaled by 0.5: max uint8 = 127, thr = int(0.5 * 127) = 63, 63 (pixel 1,1) not > 63
    assert boxes_from_maps(m * 0.5, 0.5)[0].tolist() == [[3, 3, 4, 4]]
    # t = 0.49: thr = int(124.95) = 124 < 127: both pixels are foreground; they are 2 components of
    # equal area 0, the first contour found wins; with multi_contour both come back
    both = sorted(boxes_from_maps(m, 0.49, multi_contour=True)[0].tolist())
    assert both == [[1, 1, 2, 2], [3, 3, 4, 4]]


def test_largest_component_and_multi_contour():
    m = np.zeros((12, 12))
    m[0:6, 0:6] = 1.0     # 6x6 block, contour area 25
    m[8:11, 8:11] = 1.0   # 3x3 block, contour area 4
    assert boxes_from_maps(m, 0.5)[0].tolist() == [[0, 0, 6, 6]]
    multi = sorted(boxes_from_maps(m, 0.5, multi_contour=True)[0].tolist())
    assert multi == [[0, 0, 6, 6], [8, 8, 11, 11]]


def test_empty_map_gives_the_miss_box_for_every_rule():
    zero = np.zeros((2, 7, 9))
    for kwargs in ({}, {"multi_contour": True}, {"relative_to_max": False, "quantize_uint8": False}):
        out = boxes_from_maps(zero, 0.0, **kwargs)
        assert len(out) == 2 and all(b.tolist() == [[0, 0, 0, 0]] for b in out)
    # a map below 1/255 everywhere quantises to 0: no box at any threshold
    assert boxes_from_maps(np.full((4, 4), 0.003), 0.0)[0].tolist() == [[0, 0, 0, 0]]


def test_spol_rule_absolute_float_threshold_external_contour():
    ring = np.zeros((9, 9))
    ring[1:8, 1:8] = 0.3
    ring[3:6, 3:6] = 0.0  # a hole
    ring[0, 8] = 0.2      # exactly at the threshold: not foreground (strict >)
    spol = dict(relative_to_max=False, quantize_uint8=False)
    # external contours only: the ring's outer border, x 1..7 -> boundingRect (1, 1, 7, 7) -> [1, 1, 8, 8]
    assert boxes_from_maps(ring, 0.2, multi_contour=True, **spol)[0].tolist() == [[1, 1, 8, 8]]
    # Choe's rule at t = 0.2 is relative to the uint8 max: uint8 0.3 -> 76, 0.2 -> 51,
    # thr = int(0.2 * 76) = 15, so the corner pixel (y 0, x 8) is foreground too and 8-connected
    # to the ring: outer contour x 1..8, y 0..7 -> (1, 0, 8, 8) -> [1, 0, min(9, 8), 8];
    # RETR_TREE also returns the hole's contour (pixels 2..6 around it) -> [2, 2, 7, 7]
    assert sorted(boxes_from_maps(ring, 0.2, multi_contour=True)[0].tolist()) == [[1, 0, 8, 8], [2, 2, 7, 7]]
    # absolute threshold: 0.3 is not > 0.35, although 0.3 is the map's maximum region
    assert boxes_from_maps(ring, 0.35, **spol)[0].tolist() == [[0, 0, 0, 0]]
    # torch input and a batch of two maps
    out = boxes_from_maps(torch.from_numpy(np.stack([ring, np.zeros((9, 9))])), 0.2, **spol)
    assert [b.tolist() for b in out] == [[[1, 1, 8, 8]], [[0, 0, 0, 0]]]


def test_vectorised_contour_boxes_match_per_contour_loop():
    import cv2

    def loop(contours, width, height, multi):
        if len(contours) == 0:
            return [[0, 0, 0, 0]]
        if not multi:
            contours = [max(contours, key=cv2.contourArea)]
        return [[x, y, min(x + w, width - 1), min(y + h, height - 1)]
                for x, y, w, h in map(cv2.boundingRect, contours)]

    rng = np.random.default_rng(0)
    for _ in range(40):  # noisy binary maps: many contours, the vectorised path is used
        h, w = rng.integers(5, 40, 2)
        img = (rng.random((h, w)) < rng.uniform(0.2, 0.8)).astype(np.uint8) * 255
        contours = cv2.findContours(img, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
        for multi in (False, True):
            assert boxes_from_contours(contours, w, h, multi).tolist() == loop(contours, w, h, multi)


def test_boxes_from_maps_rejects_bad_shape():
    with pytest.raises(ValueError):
        boxes_from_maps(np.zeros((1, 2, 3, 4)), 0.5)


def test_zhou_rule_on_a_signed_map_differs_from_min_max_then_choe():
    """CAM's rule (Zhou et al.; SLT-Net Sec. 3.2): keep values above 20 % of the map's max, box the
    largest connected component. On a signed map min-max normalisation lowers the level.

    8 x 10 map: background -1, a ring of 1.5 over rows 1..6, cols 2..7, a core of 10 over rows 3..4,
    cols 4..5. Zhou: level 0.2 * 10 = 2 -> the core alone -> (4, 3, 6, 5).
    Min-max then Choe: the ring becomes (1.5 + 1) / 11 = 0.227 -> uint8 57 > int(0.2 * 255) = 51,
    the background 0 -> the ring's box (2, 1, 8, 7).
    """
    m = np.full((8, 10), -1.0)
    m[1:7, 2:8] = 1.5
    m[3:5, 4:6] = 10.0
    assert boxes_from_maps_zhou(m, 0.2)[0].tolist() == [[4, 3, 6, 5]]
    assert boxes_from_maps(normalize_minmax(m), 0.2)[0].tolist() == [[2, 1, 8, 7]]
    # on a map whose min is 0 (no negative value) the two rules agree here
    m0 = np.where(m < 0, 0.0, m)
    assert boxes_from_maps_zhou(m0, 0.2)[0].tolist() == boxes_from_maps(normalize_minmax(m0), 0.2)[0].tolist()


def test_zhou_rule_components_and_empty_maps():
    m = np.zeros((6, 6))
    m[0, 0] = m[1, 1] = 5.0            # diagonal neighbours: one 8-connected component of 2 pixels
    m[4, 3:6] = 1.5                    # 3 pixels in a row: the largest component (1.5 > 0.2 * 5)
    assert boxes_from_maps_zhou(torch.from_numpy(m)[None], 0.2)[0].tolist() == [[3, 4, 5, 5]]
    m[4, 3:6] = 0.0
    assert boxes_from_maps_zhou(m, 0.2)[0].tolist() == [[0, 0, 2, 2]]
    # no positive value: nothing lies above 20 % of the max -> the empty box
    assert boxes_from_maps_zhou(-np.ones((2, 4, 4)), 0.2)[1].tolist() == [[0, 0, 0, 0]]
    with pytest.raises(ValueError):
        boxes_from_maps_zhou(np.zeros(4), 0.2)


def test_zhou_boxes_label_serially_and_restore_the_thread_count(opencv_thread_spy):
    """A parallel cv2 call starts OpenCV's worker pool, and a process forked afterwards (the evaluator's
    worker pool) can hang in its first cv2.setNumThreads; boxes_from_maps_zhou labels with one thread
    (so the pool is never started) and leaves the thread count as it found it."""
    import cv2

    import utils.evaluation.boxes as cam

    seen = opencv_thread_spy(cam, "connectedComponentsWithStats")
    boxes = cam.boxes_from_maps_zhou(np.random.default_rng(0).random((3, 32, 32)), 0.2)
    assert cv2.getNumThreads() == 2
    assert len(boxes) == 3 and seen == [1, 1, 1]
