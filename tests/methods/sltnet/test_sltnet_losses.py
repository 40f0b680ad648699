"""SLT-Net losses, top-K ACAM, VST transform inversion and box conventions on hand-built tensors."""
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sltnet.boxes import denormalize_boxes, normalize_boxes, pseudo_boxes
from sltnet.losses import (box_regression_loss, label_in_top_k, semantic_tolerance_loss, top_k_cam,
                           visual_stimulus_tolerance_loss)
from sltnet.vst import SpatialParams, VSTConfig, apply_spatial, invert_spatial, transform_batch, vst_map_pair
from utils.errors import DataError
from utils.evaluation.handoff import read_boxes_csv, write_boxes_csv

LOGITS = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
LABELS = torch.tensor([1, 0])
LSE = math.log(math.exp(2) + math.exp(1) + 1.0)   # log-sum-exp of (2, 1, 0) = 2.40761
CE = [LSE - 1.0, LSE - 0.0]                       # per-image cross entropy: 1.40761, 2.40761


def test_smt_is_cross_entropy_for_k1_alpha1():
    """Eq. 8 with K = 1, alpha = 1 is Eq. 5's cross entropy ("This loss will become the cross entropy loss")."""
    got = semantic_tolerance_loss(LOGITS, LABELS, alpha=1.0, k=1)
    assert got.item() == pytest.approx(sum(CE) / 2, abs=1e-6)
    assert got.item() == pytest.approx(F.cross_entropy(LOGITS, LABELS).item(), abs=1e-6)


def test_smt_scales_only_images_with_label_in_top_k():
    """Eq. 8: alpha * CE when x_k is in top-K(x), CE otherwise."""
    # K=2: image 0 top-2 = {0, 1} holds label 1 -> alpha * CE; image 1 top-2 = {2, 1} lacks 0 -> CE
    assert label_in_top_k(LOGITS, LABELS, 2).tolist() == [True, False]
    per_image = semantic_tolerance_loss(LOGITS, LABELS, alpha=0.4, k=2, reduction="none")
    assert per_image.tolist() == pytest.approx([0.4 * CE[0], CE[1]], abs=1e-6)
    # K=3 (all classes): both inside -> alpha * mean CE
    assert semantic_tolerance_loss(LOGITS, LABELS, alpha=0.4, k=3).item() == pytest.approx(0.4 * sum(CE) / 2, abs=1e-6)
    # K=1: image 0's top-1 is class 0, not its label -> plain CE for both
    assert semantic_tolerance_loss(LOGITS, LABELS, alpha=0.4, k=1).item() == pytest.approx(sum(CE) / 2, abs=1e-6)
    with pytest.raises(ValueError):
        semantic_tolerance_loss(LOGITS, LABELS, alpha=1.5, k=1)


def test_top_k_cam_averages_the_maps_of_the_top_k_classes():
    """Eq. 9: A = 1/K * sum over the top-K classes of M_j."""
    cams = torch.zeros(1, 3, 2, 2)
    cams[0, 0] = 1.0
    cams[0, 1] = torch.tensor([[3.0, 0.0], [0.0, 3.0]])
    cams[0, 2] = torch.tensor([[1.0, 5.0], [1.0, 1.0]])
    logits = torch.tensor([[0.1, 0.9, 0.5]])           # top-2 = classes 1 and 2
    assert top_k_cam(cams, logits, 2)[0].tolist() == [[2.0, 2.5], [0.5, 2.0]]
    assert top_k_cam(cams, logits, 1)[0].tolist() == cams[0, 1].tolist()
    assert torch.allclose(top_k_cam(cams, logits, 10)[0], cams[0].mean(0))


def _smooth_maps(size=16):
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    a = torch.exp(-((x - 0.3) ** 2 + (y + 0.2) ** 2) / 0.5)
    b = torch.exp(-((x + 0.4) ** 2 + y ** 2) / 0.8)
    return torch.stack([torch.stack([a, b]), torch.stack([b, a])])   # [2, 2, size, size]


def test_flip_inverts_exactly_and_scale_within_interpolation_error():
    """Eq. 12: g' undoes the spatial part of g (Eq. 10): the flip exactly, the scale up to interpolation."""
    maps = _smooth_maps()
    flip_only = SpatialParams(flip=torch.tensor([True, False]), size=(16, 16))
    flipped = apply_spatial(maps, flip_only)
    assert torch.equal(flipped[0], maps[0].flip(-1)) and torch.equal(flipped[1], maps[1])
    assert torch.equal(invert_spatial(flipped, flip_only, (16, 16)), maps)
    for size in [(24, 24), (12, 12)]:
        params = SpatialParams(flip=torch.tensor([True, True]), size=size)
        moved = apply_spatial(maps, params)
        assert moved.shape[-2:] == size
        back = invert_spatial(moved, params, (16, 16))
        assert (back - maps).abs().max().item() < 0.05
        assert (back - maps).abs().max().item() > 0          # it is a real resampling


def _pool_localizer(images, stride=4):
    """A localizer whose 'CAMs' are average-pooled image channels: equivariant to flip and scale."""
    return F.avg_pool2d(images, stride)


def test_vst_loss_zero_for_equivariant_map_and_positive_otherwise():
    """Eq. 10-13: a localizer equivariant to flip and scale has L_VST = 0."""
    torch.manual_seed(0)
    images = _smooth_maps(32).repeat(1, 2, 1, 1)[:, :3]      # [2, 3, 32, 32], smooth content
    cfg = VSTConfig(flip_prob=0.5, scale_min=1.0, scale_max=1.0, brightness=0, contrast=0, saturation=0,
                    hue=0, size_multiple=4)
    transformed, params = transform_batch(images, cfg, rng=random.Random(3))
    assert params.size == (32, 32) and sorted(params.flip.tolist()) == [False, True]   # seeded: one image flipped
    cams, cams_t = _pool_localizer(images), _pool_localizer(transformed)
    m_o, m_it = vst_map_pair(cams, cams_t, params, cfg)
    assert visual_stimulus_tolerance_loss(m_o, m_it).item() < 1e-12   # zero up to float summation order
    # a map that does not follow the flip (position-fixed) gives a positive loss
    m_o2, m_it2 = vst_map_pair(cams, cams_t.flip(-1), params, cfg)
    assert visual_stimulus_tolerance_loss(m_o2, m_it2).item() > 1e-4
    # with a scale the equivariant map still gives (almost) zero loss
    cfg_s = VSTConfig(scale_min=1.5, scale_max=1.5, brightness=0, contrast=0, saturation=0, hue=0, size_multiple=4)
    transformed, params = transform_batch(images, cfg_s, rng=random.Random(1))
    assert params.size == (48, 48)
    m_o, m_it = vst_map_pair(cams, _pool_localizer(transformed), params, cfg_s)
    assert visual_stimulus_tolerance_loss(m_o, m_it).item() < 1e-3


def test_vst_map_selection_and_normalisation():
    cams = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    params = SpatialParams(flip=torch.tensor([False, False]), size=(2, 2))
    logits = torch.tensor([[0.0, 1.0, 2.0], [5.0, 0.0, 1.0]])
    cfg = VSTConfig(maps="topk", normalize="max")
    m_o, m_it = vst_map_pair(cams, cams, params, cfg, logits=logits, k=1)
    assert m_o.shape == (2, 1, 2, 2)
    assert m_o[0, 0].flatten().tolist() == pytest.approx([8 / 11, 9 / 11, 10 / 11, 1.0], abs=1e-5)   # class 2 / max
    m_o, _ = vst_map_pair(cams, cams, params, VSTConfig(maps="gt"), labels=torch.tensor([1, 0]))
    assert m_o[:, 0].tolist() == [cams[0, 1].tolist(), cams[1, 0].tolist()]


def test_box_normalisation_round_trip():
    boxes = np.array([[0, 0, 223, 223], [10, 20, 110, 60]], dtype=np.float64)
    norm = normalize_boxes(boxes, 224)
    assert norm[1].tolist() == pytest.approx([10 / 224, 20 / 224, 110 / 224, 60 / 224])
    assert np.allclose(denormalize_boxes(norm, 224), boxes, atol=1e-9)
    rect = normalize_boxes(torch.tensor([[30.0, 10.0, 60.0, 40.0]]), (300, 100))  # (width, height)
    assert rect[0].tolist() == pytest.approx([0.1, 0.1, 0.2, 0.4])
    assert torch.allclose(denormalize_boxes(rect, (300, 100)), torch.tensor([[30.0, 10.0, 60.0, 40.0]]))


def test_regression_loss_is_summed_smooth_l1():
    """Eq. 3-4: L_REG = sum over the 4 coordinates of smooth_L1(p_i - p^_i), 0.5 x^2 below 1, |x| - 0.5 above."""
    pred = torch.tensor([[0.5, 0.5, 2.5, 0.0]])
    target = torch.zeros(1, 4)
    # 0.5*0.25 + 0.5*0.25 + (2.5 - 0.5) + 0
    assert box_regression_loss(pred, target).item() == pytest.approx(2.25)


def test_pseudo_box_of_a_block():
    maps = torch.zeros(2, 16, 16)
    maps[0, 4:8, 2:10] = 1.0      # rows 4..7, cols 2..9 -> x0=2, y0=4, x1=2+8, y1=4+4
    maps[1, 0, 0] = 0.1           # below 0.2 of max after min-max? it IS the max -> whole pixel box
    boxes = pseudo_boxes(maps, 16, 0.2)
    assert boxes[0].tolist() == [2, 4, 10, 8]
    assert boxes[1].tolist() == [0, 0, 1, 1]


def test_boxes_csv_round_trip_and_errors(tmp_path):
    path = tmp_path / "boxes.csv"
    write_boxes_csv(path, ["a/x.jpg", "b/y.jpg"], [[1, 2, 3, 4], [0, 0, 5, 6]], meta={"input_size": 224})
    boxes, meta = read_boxes_csv(path)
    assert boxes["b/y.jpg"].tolist() == [0, 0, 5, 6] and meta == {"input_size": 224}
    with pytest.raises(DataError, match="localizer"):
        read_boxes_csv(tmp_path / "missing.csv")
    path.write_text("image_id,x0,y0,x1,y1\na.jpg,1,2,3\n")
    with pytest.raises(DataError, match=r"boxes.csv:2:"):
        read_boxes_csv(path)


def test_boxes_csv_inverted_box_refused_unless_allowed(tmp_path):
    """A regressor may predict x1 < x0: the reader names file and line, except for the demo's picture
    (allow_inverted), which keeps the box exactly as written."""
    path = tmp_path / "boxes.csv"
    path.write_text("image_id,x0,y0,x1,y1\na.jpg,1,2,3,4\nb.jpg,5,6,2,8\n")
    with pytest.raises(DataError, match=r"boxes.csv:3:.*invalid box"):
        read_boxes_csv(path)
    boxes, _ = read_boxes_csv(path, allow_inverted=True)
    assert boxes["b.jpg"].tolist() == [5, 6, 2, 8]
    path.write_text("image_id,x0,y0,x1,y1\na.jpg,1,2,nan,4\n")
    with pytest.raises(DataError, match=r"boxes.csv:2:.*invalid box"):
        read_boxes_csv(path, allow_inverted=True)


# ----------------------------------------------------------------------------- issue 9: the letter of the paper
def test_vst_loss_is_eq13_summed_over_the_class_maps():
    """Eq. 13: L_VST = 1/(W x H) * ||M^o - M^it||_2^2 with M in R^{W x H x C}: sum over C, mean over W x H.

    B = 2 images, C = 2 maps of 2 x 2. Squared differences added by hand:
    image 0: map 0 (1-1)^2 + (2-1)^2 + (3-1)^2 + (4-1)^2 = 0+1+4+9 = 14, map 1 1+0+0+4 = 5 -> 19 / 4 = 4.75
    image 1: map 0 0+0+0+9 = 9, map 1 0+0+0+4 = 4 -> 13 / 4 = 3.25;  batch mean (4.75 + 3.25) / 2 = 4.0.
    Dividing by C as well (the per-map mean) would give 2.0.
    """
    m_o = torch.tensor([[[[1., 2.], [3., 4.]], [[0., 0.], [0., 0.]]],
                        [[[0., 0.], [0., 0.]], [[2., 2.], [2., 2.]]]])
    m_it = torch.tensor([[[[1., 1.], [1., 1.]], [[1., 0.], [0., 2.]]],
                         [[[0., 0.], [0., 3.]], [[2., 2.], [2., 0.]]]])
    assert visual_stimulus_tolerance_loss(m_o, m_it).item() == pytest.approx(4.0)
    assert visual_stimulus_tolerance_loss(m_o, m_it, reduction="mean").item() == pytest.approx(2.0)
    # position (0, 0) masked out: image 0 (1+4+9) + (0+0+4) = 18 over 3 positions = 6, image 1 (9 + 4) / 3
    valid = torch.tensor([[[[0., 1.], [1., 1.]]]])
    assert visual_stimulus_tolerance_loss(m_o, m_it, valid).item() == pytest.approx((6 + 13 / 3) / 2)
    with pytest.raises(ValueError):
        visual_stimulus_tolerance_loss(m_o, m_it, reduction="sum")


def test_vst_border_cells_extrapolated_by_the_inverse_of_a_down_scale():
    """Eq. 12's inverse resizes M^t (h' x w') back to h x w; with h' < h the outer cells are extrapolated.

    4 cells from 3 (scale 0.75): cell i reads source (i + 0.5) * 3/4 - 0.5 = -0.125, 0.625, 1.375, 2.125;
    -0.125 < 0 and 2.125 > 2 are clamped -> mask [0, 1, 1, 0] per axis. From 6 (scale 1.5): 0.25 .. 4.75,
    all inside [0, 5] -> nothing masked.
    """
    from sltnet.vst import valid_after_inverse, vst_loss

    params = SpatialParams(flip=torch.tensor([False]), size=(48, 48))
    down = valid_after_inverse(params, (4, 4), (3, 3))[0, 0]
    assert down.tolist() == [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    assert valid_after_inverse(params, (4, 4), (6, 6)).min().item() == 1.0
    # vst_loss applies the mask by default, keeps every cell with border="keep"
    cams = torch.zeros(1, 2, 4, 4)
    cams_t = torch.zeros(1, 2, 3, 3)
    cams_t[0, 0, 0, 0] = 3.0        # after the inverse: 3.0 in the extrapolated corner cell, less inside
    small = SpatialParams(flip=torch.tensor([False]), size=(12, 12))
    assert vst_loss(cams, cams_t, small, VSTConfig()).item() == pytest.approx(
        visual_stimulus_tolerance_loss(cams, invert_spatial(cams_t, small, (4, 4)), down[None, None]).item())
    keep = vst_loss(cams, cams_t, small, VSTConfig(border="keep")).item()
    assert keep == pytest.approx(visual_stimulus_tolerance_loss(cams, invert_spatial(cams_t, small, (4, 4))).item())
    assert keep > vst_loss(cams, cams_t, small, VSTConfig()).item()


def test_vst_gradient_reaches_the_original_maps_unless_detached():
    """Eq. 13 is a loss on M^o and M^it alike; by default both get its gradient (--vst-detach-original stops M^o's)."""
    cams = torch.rand(1, 2, 4, 4, requires_grad=True)
    cams_t = torch.rand(1, 2, 4, 4, requires_grad=True)
    params = SpatialParams(flip=torch.tensor([True]), size=(16, 16))
    from sltnet.vst import vst_loss

    vst_loss(cams, cams_t, params, VSTConfig()).backward()
    assert cams.grad is not None and cams.grad.abs().sum() > 0 and cams_t.grad.abs().sum() > 0
    cams.grad = None
    vst_loss(cams, cams_t, params, VSTConfig(detach_original=True)).backward()
    assert cams.grad is None


def test_smt_tie_with_the_k_th_score_is_inside_top_k():
    """Eq. 8 tests x_k in top-K(x) on scores: a true class tied with the K-th score is inside.

    Scores (1, 2, 2), K = 1: the top-1 score is 2; classes 1 and 2 both hold it, so both are inside
    (torch.topk would pick only one of them); class 0 is outside.
    """
    logits = torch.tensor([[1.0, 2.0, 2.0]] * 3)
    labels = torch.tensor([0, 1, 2])
    assert label_in_top_k(logits, labels, 1).tolist() == [False, True, True]
    ce = F.cross_entropy(logits, labels, reduction="none")
    got = semantic_tolerance_loss(logits, labels, alpha=0.4, k=1, reduction="none")
    assert got.tolist() == pytest.approx([ce[0].item(), 0.4 * ce[1].item(), 0.4 * ce[2].item()])
    # K = 2: classes scoring strictly higher than class 0 are 2 -> still outside
    assert label_in_top_k(logits, labels, 2).tolist() == [False, True, True]
    assert label_in_top_k(logits, labels, 3).tolist() == [True, True, True]


def test_pseudo_box_on_a_14x14_map_of_a_224_input_gives_the_papers_p():
    """Sec. 3.1: p = (x1/m, y1/m, x2/m, y2/m), m the downsampling factor (16: a 224 input, a 14 x 14 map).

    Map: 1 on rows 2..6, cols 3..8 of 14 x 14, 0 elsewhere, upsampled x16 (bilinear, align_corners=False:
    pixel x reads cell (x + 0.5)/16 - 0.5). Left edge: value (x + 0.5)/16 - 2.5 > 0.2 (20 % of the max 1)
    -> x > 42.7 -> x0 = 43; right: 9.5 - (x + 0.5)/16 > 0.2 -> x < 148.3 -> last column 148, x1 = 148 + 1;
    top: (y + 0.5)/16 - 1.5 > 0.2 -> y0 = 27; bottom: 7.5 - (y + 0.5)/16 > 0.2 -> last row 116, y1 = 117.
    p = (43, 27, 149, 117) / 16; with --box-scale input, / 224.
    """
    from sltnet.boxes import box_divisor

    cam = torch.zeros(1, 14, 14)
    cam[0, 2:7, 3:9] = 1.0
    box = pseudo_boxes(cam, 224, 0.2)
    assert box[0].tolist() == [43, 27, 149, 117]
    p = normalize_boxes(torch.from_numpy(box).float(), box_divisor("stride", 224, 16))
    assert p[0].tolist() == [43 / 16, 27 / 16, 149 / 16, 117 / 16]          # 2.6875, 1.6875, 9.3125, 7.3125
    q = normalize_boxes(torch.from_numpy(box).float(), box_divisor("input", 224, 16))
    assert q[0].tolist() == pytest.approx([43 / 224, 27 / 224, 149 / 224, 117 / 224])
    # back to pixels at test time, under both scales
    assert denormalize_boxes(p, box_divisor("stride", 224, 16))[0].tolist() == [43, 27, 149, 117]
    assert denormalize_boxes(q, box_divisor("input", 224, 16))[0].tolist() == pytest.approx([43, 27, 149, 117])
    with pytest.raises(ValueError):
        box_divisor("stride", 224, None)


def test_pseudo_box_rule_on_a_signed_cam():
    """The localizer's boxes follow CAM's rule on the raw map (Sec. 3.2), not min-max then 20 %."""
    cam = torch.full((1, 8, 10), -1.0)
    cam[0, 1:7, 2:8] = 1.5
    cam[0, 3:5, 4:6] = 10.0
    assert pseudo_boxes(cam, (8, 10), 0.2)[0].tolist() == [4, 3, 6, 5]
    assert pseudo_boxes(cam, (8, 10), 0.2, rule="choe")[0].tolist() == [2, 1, 8, 7]
    with pytest.raises(ValueError):
        pseudo_boxes(cam, (8, 10), 0.2, rule="otsu")


def test_trained_box_encoding_is_read_from_args_yaml(tmp_path):
    """The test converts p back as the regressor was trained (args.yaml beside model.pth)."""
    import argparse

    from sltnet.boxes import trained_box_encoding

    def ask(scale=None, stride=None):
        return argparse.Namespace(box_scale=scale, box_stride=stride)

    weights = tmp_path / "model.pth"
    (tmp_path / "args.yaml").write_text("box_scale: stride\nbox_stride: 16.0\n")
    assert trained_box_encoding(ask(), weights) == ("stride", 16.0)
    assert trained_box_encoding(ask("stride", 16), weights) == ("stride", 16.0)
    with pytest.raises(DataError, match="box_scale stride"):
        trained_box_encoding(ask("input"), weights)
    with pytest.raises(DataError, match="box_stride 16"):
        trained_box_encoding(ask("stride", 32), weights)
    (tmp_path / "args.yaml").write_text("box_scale: input\nbox_stride: null\n")
    assert trained_box_encoding(ask(), weights) == ("input", None)
    (tmp_path / "args.yaml").write_text("backbone: vgg16\n")           # a run from before the option existed
    assert trained_box_encoding(ask(), weights) == ("input", None)
    (tmp_path / "args.yaml").unlink()
    with pytest.raises(DataError, match="--box-scale"):
        trained_box_encoding(ask(), weights)
    assert trained_box_encoding(ask("stride", 8), weights) == ("stride", 8.0)


def test_vst_loss_has_the_trivial_minima_the_demo_falls_into():
    """Eq. 13 is quadratic in the maps and Eq. 7 linear in the classifier W: scaling W by c scales
    L_VST by c^2, so L_VST alone is minimised by W -> 0 (every CAM flat at 0), and with --vst-normalize
    max (ReLU, then / max) by any all-negative map. sltnet/README.md ("The demo's SLT-Net map") measures
    the demo's localizer falling into both at beta >= 0.1 (8x8 maps).

    Hand-worked, C = 1, one 2 x 2 map: M^o = [[1, 2], [3, 4]], M^it = [[1, 1], [1, 1]]:
    squared differences 0 + 1 + 4 + 9 = 14 over W x H = 4 -> 3.5; maps x 0.5 -> 0.25 x 3.5 = 0.875.
    """
    m_o = torch.tensor([[[[1., 2.], [3., 4.]]]])
    m_it = torch.ones(1, 1, 2, 2)
    assert visual_stimulus_tolerance_loss(m_o, m_it).item() == pytest.approx(3.5)
    assert visual_stimulus_tolerance_loss(0.5 * m_o, 0.5 * m_it).item() == pytest.approx(0.875)
    assert visual_stimulus_tolerance_loss(0 * m_o, 0 * m_it).item() == 0.0
    params = SpatialParams(flip=torch.tensor([False]), size=(2, 2))
    cfg = VSTConfig(normalize="max", brightness=0, contrast=0, saturation=0, hue=0)
    a, b = vst_map_pair(m_o, m_it, params, cfg)      # ReLU + max: [[.25, .5], [.75, 1]] vs all ones
    assert visual_stimulus_tolerance_loss(a, b).item() == pytest.approx((0.75 ** 2 + 0.5 ** 2 + 0.25 ** 2) / 4, rel=1e-5)  # eps 1e-6 in / max
    a, b = vst_map_pair(-m_o, -2 * m_it, params, cfg)   # different maps, both negative: zero loss
    assert visual_stimulus_tolerance_loss(a, b).item() == 0.0
