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


# ----------------------------------------------------------------------------- the letter of the paper
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


def test_the_regressor_test_reads_the_box_encoding_beside_the_weights_it_tests(tmp_path):
    """The final test converts p back as the regressor was trained: box scale and m from the args.yaml
    beside the weights it tests (also given with --weights); a contradicting option is refused, and
    an encoding known from nowhere is one error line."""
    from sltnet.options import REGRESSOR_TEST_INHERITS, check_box_encoding, regressor_test_parser
    from utils.config import parse_args
    from utils.engine.stage import inherit_training_options
    from utils.errors import RunError

    box_encoding = REGRESSOR_TEST_INHERITS[-1]
    assert box_encoding.options == ("box_scale", "box_stride") and box_encoding.unless is None

    def ask(*argv):
        args = parse_args(regressor_test_parser(), ["--weights", str(tmp_path / "model.pth"), *argv],
                          stage="regressor_test")
        inherit_training_options(args, box_encoding)
        check_box_encoding(args)
        return args.box_scale, args.box_stride

    (tmp_path / "args.yaml").write_text("box_scale: stride\nbox_stride: 16.0\n")
    assert ask() == ("stride", 16.0)
    assert ask("--box-scale", "stride", "--box-stride", "16") == ("stride", 16.0)
    with pytest.raises(RunError, match="the training run used --box-scale stride, this test step was given "
                                       "--box-scale input"):
        ask("--box-scale", "input")
    with pytest.raises(RunError, match="used --box-stride 16.0, this test step was given --box-stride 32.0"):
        ask("--box-stride", "32")
    (tmp_path / "args.yaml").write_text("box_scale: input\nbox_stride: null\n")
    assert ask() == ("input", None)
    (tmp_path / "args.yaml").write_text("backbone: vgg16\n")           # no box scale recorded
    with pytest.raises(DataError, match="args.yaml: records no box_scale"):
        ask()
    (tmp_path / "args.yaml").unlink()
    with pytest.raises(DataError, match="pass --box-scale stride --box-stride M"):
        ask()
    assert ask("--box-scale", "stride", "--box-stride", "8") == ("stride", 8.0)
    with pytest.raises(DataError, match="records no box_stride for box_scale stride"):
        ask("--box-scale", "stride")


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


# ----------------------------------------------------------------------------- SMT: the exclude-topk variant
def test_smt_exclude_topk_leaves_the_other_top_k_classes_out_of_the_softmax():
    """--smt-variant exclude-topk is NOT Eq. 8. 4 classes, K = 2, alpha = 0.4; scores
    x = (ln 4, ln 2, 0, 0), so exp x = (4, 2, 1, 1), sum 8.

    * label 1 (top-2 = {0, 1}: inside): class 0 leaves the softmax: -ln(2 / (2 + 1 + 1)) = ln 2,
      times alpha: 0.4 ln 2. Eq. 8 gives alpha * CE = 0.4 * -ln(2 / 8) = 0.4 ln 4.
    * label 3 (outside the top-2): plain CE, -ln(1 / 8) = ln 8, as Eq. 8.
    * tie: x = (ln 2, ln 2, ln 2, 0), label 2, K = 2: no class scores strictly higher than the label,
      so it is inside (Eq. 8's tie rule); the other classes at the K-th score (ln 2), 0 and 1, leave:
      -ln(2 / (2 + 1)) = ln 1.5, times alpha.
    Gradient of the first image (mean over 3 images): alpha (softmax - onehot) over the kept classes
    {1, 2, 3} = 0.4 (0.5 - 1, 0.25, 0.25) / 3 and exactly 0 for the class left out.
    """
    ln = math.log
    logits = torch.tensor([[ln(4), ln(2), 0.0, 0.0], [ln(4), ln(2), 0.0, 0.0], [ln(2), ln(2), ln(2), 0.0]],
                          requires_grad=True)
    labels = torch.tensor([1, 3, 2])
    got = semantic_tolerance_loss(logits, labels, alpha=0.4, k=2, reduction="none", variant="exclude-topk")
    assert got.tolist() == pytest.approx([0.4 * ln(2), ln(8), 0.4 * ln(1.5)], abs=1e-6)
    eq8 = semantic_tolerance_loss(logits, labels, alpha=0.4, k=2, reduction="none")
    assert eq8.tolist() == pytest.approx([0.4 * ln(4), ln(8), 0.4 * -ln(2 / 7)], abs=1e-6)
    got.mean().backward()
    assert logits.grad[0].tolist() == pytest.approx([0.0, 0.4 * -0.5 / 3, 0.4 * 0.25 / 3, 0.4 * 0.25 / 3], abs=1e-7)
    assert logits.grad[0, 0].item() == 0.0 and logits.grad[2, :2].tolist() == [0.0, 0.0]
    # K = 1: no other class inside -> the variant is Eq. 8 (and with alpha = 1 plain cross entropy)
    assert semantic_tolerance_loss(LOGITS, LABELS, alpha=0.4, k=1, variant="exclude-topk").item() == \
        pytest.approx(semantic_tolerance_loss(LOGITS, LABELS, alpha=0.4, k=1).item())
    with pytest.raises(ValueError, match="variant"):
        semantic_tolerance_loss(LOGITS, LABELS, alpha=0.4, k=2, variant="eq9")


# ----------------------------------------------------------------------------- teacher maps
def test_teacher_maps_acam_label_and_gt():
    """--teacher-map: acam = Eq. 9 on the predicted top-K; acam-label = the same with the label forced
    in (it replaces the K-th class when missing); gt = the label's CAM.

    3 classes, maps constant 1, 2, 4; scores (0.9, 0.5, 0.1), K = 2: top-2 = {0, 1} -> ACAM (1 + 2) / 2 = 1.5.
    Label 2 (not in the top-2): it replaces class 1 -> (1 + 4) / 2 = 2.5; label 1 (inside): 1.5 as ACAM.
    gt: 4 and 2.
    """
    from sltnet.losses import localization_map, top_k_classes_with_label

    cams = torch.tensor([1.0, 2.0, 4.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    logits = torch.tensor([[0.9, 0.5, 0.1]] * 2)
    labels = torch.tensor([2, 1])
    assert top_k_classes_with_label(logits, labels, 2).tolist() == [[0, 2], [0, 1]]
    def at(teacher, acam=True):
        return localization_map(cams, logits, labels, acam=acam, top_k=2, teacher=teacher)[:, 0, 0].tolist()
    assert at("acam") == [1.5, 1.5]
    assert at("acam-label") == [2.5, 1.5]
    assert at("gt") == [4.0, 2.0] == at("gt", acam=False) == at("acam", acam=False)
    with pytest.raises(ValueError, match="contradicts acam off"):
        at("acam-label", acam=False)
    with pytest.raises(ValueError, match="unknown teacher map"):
        at("cam")


# ----------------------------------------------------------------------------- VST options, each by hand
def test_vst_colour_jitter_off_with_zero_strengths():
    """--vst-brightness 0 --vst-contrast 0 --vst-saturation 0 --vst-hue 0: no colour jitter at all; with no
    flip and scale 1 the transformed copy is the batch itself, bit for bit."""
    from sltnet.vst import colour_jitter

    torch.manual_seed(0)
    images = torch.randn(3, 3, 8, 8)
    off = VSTConfig(brightness=0, contrast=0, saturation=0, hue=0, flip_prob=0, scale_min=1, scale_max=1, size_multiple=4)
    assert colour_jitter(images, off) is images
    transformed, params = transform_batch(images, off, rng=random.Random(0))
    assert torch.equal(transformed, images) and params.size == (8, 8) and not params.flip.any()
    assert not torch.equal(colour_jitter(images, VSTConfig(brightness=0.4, contrast=0, saturation=0, hue=0)), images)


def _hue(rgb):
    """Hue in [0, 1) of [..., 3, H, W] RGB by the hexcone formula (max - min > 0 assumed)."""
    r, g, b = rgb.unbind(-3)
    mx, mn = rgb.amax(-3), rgb.amin(-3)
    d = mx - mn
    h = torch.where(mx == r, ((g - b) / d) % 6, torch.where(mx == g, (b - r) / d + 2, (r - g) / d + 4))
    return h / 6


def test_vst_hue_zero_keeps_every_pixels_hue():
    """Brightness (x b), contrast (blend with the image's grey mean) and saturation (blend with the
    pixel's grey) scale every channel difference of a pixel by the same positive factor, so with hue 0
    each pixel's hue, (g - b) / (max - min) etc., is unchanged; hue 0.1 shifts it. Pixels are kept
    in [0.3, 0.6] with distinct channels and factors in [0.8, 1.2], so no channel is clipped."""
    from sltnet.vst import IMAGENET_MEAN, IMAGENET_STD, colour_jitter

    torch.manual_seed(0)
    rgb = torch.stack([0.5 + 0.1 * torch.rand(4, 6, 6), 0.4 + 0.05 * torch.rand(4, 6, 6),
                       0.3 + 0.05 * torch.rand(4, 6, 6)], dim=1)             # r > g > b: hue well defined
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    normalised = (rgb - mean) / std
    for hue, changed in ((0.0, False), (0.1, True)):
        out = colour_jitter(normalised, VSTConfig(brightness=0.2, contrast=0.2, saturation=0.2, hue=hue)) * std + mean
        assert not torch.allclose(out, rgb, atol=1e-3)                       # the jitter did act
        shift = (_hue(out) - _hue(rgb)).abs()
        shift = torch.minimum(shift, 1 - shift)                              # hue is circular
        assert (shift.max().item() > 1e-3) == changed, shift.max().item()
        if not changed:
            assert shift.max().item() < 1e-4


def test_vst_normalisation_none_max_minmax_by_hand():
    """--vst-normalize: none = the raw CAMs (Eq. 13 on M of Eq. 7); max = ReLU then / max; minmax = (x - min) /
    (max - min). One 2 x 2 map [[-1, 1], [3, 7]]: max: [[0, 1/7], [3/7, 1]]; minmax: [[0, 2/8], [4/8, 1]]."""
    cams = torch.tensor([[[[-1.0, 1.0], [3.0, 7.0]]]])
    params = SpatialParams(flip=torch.tensor([False]), size=(2, 2))
    for how, expected in (("none", [-1.0, 1.0, 3.0, 7.0]), ("max", [0.0, 1 / 7, 3 / 7, 1.0]),
                          ("minmax", [0.0, 0.25, 0.5, 1.0])):
        m_o, m_it = vst_map_pair(cams, cams, params, VSTConfig(normalize=how))
        assert m_o.flatten().tolist() == pytest.approx(expected, abs=1e-5), how
        assert torch.equal(m_o, m_it)
    with pytest.raises(ValueError, match="normalisation"):
        vst_map_pair(cams, cams, params, VSTConfig(normalize="l2"))


def test_vst_maps_all_topk_gt_by_hand():
    """--vst-maps: all keeps the C maps (Eq. 11: M in R^{W x H x C}); topk the K classes of the ORIGINAL
    image's logits; gt the label's map. Maps constant 0, 1, 2, 3 (class c = c); transformed copy 0.
    L_VST (Eq. 13, one 1 x 1 cell): all: 0 + 1 + 4 + 9 = 14; topk, K = 2, scores (4, 3, 2, 1) -> classes
    0, 1: 0 + 1 = 1; gt, label 3: 9."""
    from sltnet.vst import vst_loss

    cams = torch.arange(4.0).view(1, 4, 1, 1)
    zeros = torch.zeros(1, 4, 1, 1)
    params = SpatialParams(flip=torch.tensor([False]), size=(4, 4))
    logits, labels = torch.tensor([[4.0, 3.0, 2.0, 1.0]]), torch.tensor([3])
    for maps, expected in (("all", 14.0), ("topk", 1.0), ("gt", 9.0)):
        cfg = VSTConfig(maps=maps)
        assert vst_loss(cams, zeros, params, cfg, logits=logits, labels=labels, k=2).item() == expected, maps


def test_vst_detach_original_gradient_by_hand():
    """--vst-detach-original: M^o gets no gradient from L_VST, M^it the same as without it.
    One map, 2 x 2, B = 1: L = 1/4 * sum (M^o - M^it)^2, dL/dM^it = -(M^o - M^it) / 2, dL/dM^o = +(M^o - M^it) / 2.
    M^o = [[1, 2], [3, 4]], M^it = 0 -> dL/dM^it = [[-0.5, -1], [-1.5, -2]]."""
    from sltnet.vst import vst_loss

    params = SpatialParams(flip=torch.tensor([False]), size=(8, 8))
    for detach in (False, True):
        m_o = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], requires_grad=True)
        m_it = torch.zeros(1, 1, 2, 2, requires_grad=True)
        loss = vst_loss(m_o, m_it, params, VSTConfig(detach_original=detach))
        assert loss.item() == pytest.approx(30 / 4)
        loss.backward()
        assert m_it.grad.flatten().tolist() == [-0.5, -1.0, -1.5, -2.0]
        assert (m_o.grad is None) == detach
        if not detach:
            assert m_o.grad.flatten().tolist() == [0.5, 1.0, 1.5, 2.0]


def test_vst_reduction_eq13_and_mean_through_the_options():
    """--vst-reduction eq13 | mean reach L_VST through VSTConfig.from_args (with every other VST option):
    C = 2 maps of 1 x 1 with squared differences 1 and 9: eq13 (sum over C, / W x H) = 10, mean = 10 / 2."""
    from sltnet.localizer.train import get_args_parser
    from sltnet.vst import vst_loss
    from utils.config import parse_args

    argv = ["--vst-normalize", "minmax", "--vst-maps", "topk", "--vst-detach-original", "--vst-reduction", "mean",
            "--vst-border", "keep", "--vst-brightness", "0", "--vst-hue", "0.05", "--vst-bn", "frozen"]
    cfg = VSTConfig.from_args(parse_args(get_args_parser(), argv, stage="localizer_train"), size_multiple=8)
    assert (cfg.normalize, cfg.maps, cfg.detach_original, cfg.reduction, cfg.border) == ("minmax", "topk", True, "mean", "keep")
    assert (cfg.brightness, cfg.hue, cfg.size_multiple) == (0.0, 0.05, 8)
    default = VSTConfig.from_args(parse_args(get_args_parser(), [], stage="localizer_train"), size_multiple=16)
    assert (default.normalize, default.maps, default.detach_original, default.reduction) == ("none", "all", False, "eq13")
    params = SpatialParams(flip=torch.tensor([False]), size=(16, 16))
    m_o, m_it = torch.tensor([[[[1.0]], [[3.0]]]]), torch.zeros(1, 2, 1, 1)
    assert vst_loss(m_o, m_it, params, default).item() == 10.0
    assert vst_loss(m_o, m_it, params, VSTConfig(reduction="mean")).item() == 5.0


# ----------------------------------------------------------------------------- K from the class count
def test_top_k_ratio_resolves_k_from_the_class_count(capsys):
    """--top-k-ratio R: K = max(1, R x C rounded half up). The paper's: 0.15 x 200 = 30 (CUB), 0.10 x 1000
    = 100 (ILSVRC); 0.15 x 6 = 0.9 -> 1; 0.25 x 6 = 1.5 -> 2 (half up); 0.01 x 3 = 0.03 -> 0 -> 1."""
    import argparse

    from sltnet.options import resolve_top_k
    from utils.ranges import fraction   # the type= of --top-k-ratio

    def k(ratio, classes, top_k=30, explicit=None):
        args = argparse.Namespace(top_k=top_k, top_k_ratio=ratio)
        return resolve_top_k(args, classes, explicit), args.top_k
    assert k(0.15, 200) == (30, 30) and k(0.1, 1000) == (100, 100)
    assert k(0.15, 6) == (1, 1) and k(0.25, 6) == (2, 2) and k(0.01, 3) == (1, 1) and k(1.0, 7) == (7, 7)
    assert k(None, 200, top_k=12) == (12, 12)                       # no ratio: --top-k as given
    assert capsys.readouterr().err == ""
    assert k(0.5, 6, top_k=2, explicit={"top_k"}) == (3, 3)         # both given: the ratio wins, one notice
    assert capsys.readouterr().err.strip() == ("notice: --top-k-ratio 0.5 gives K = 3 of 6 classes; it wins over "
                                               "--top-k 2")
    assert k(0.5, 6, top_k=3, explicit={"top_k"}) == (3, 3) and capsys.readouterr().err == ""
    for bad in ("0", "1.5", "-0.1", "nan", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"in \(0, 1\]"):
            fraction(bad)
    assert fraction("1") == 1.0


# ----------------------------------------------------------------------------- --box-threshold best
def test_threshold_sweep_chooses_the_threshold_of_the_best_gt_known_loc():
    """sltnet.boxes.ThresholdSweep, zhou rule (raw map > t * max, largest component). One 10 x 10 map:
    1.0 on the 2 x 2 core (rows/cols 4-5), 0.5 on the 6 x 6 block around it (rows/cols 2-7), 0 elsewhere.
    t < 0.5: the block's box (2, 2, 8, 8); t >= 0.5 (0.5 > 0.5 x 1 is false): the core's (4, 4, 6, 6).
    Boxes are compared with the inclusive IoU (x1 = x0 + w: 7 x 7 and 3 x 3 pixels). GT (2, 2, 8, 8):
    IoU 1 with the block's box, 9 / 49 with the core's; so GT-known Loc is 100 for t = 0.05 .. 0.49 and 0
    from 0.50 on, and the best is the lowest, 0.05. A second image whose GT is (4, 4, 6, 6): 0 below 0.5,
    100 from it (best 0.5); both together: 50 everywhere, the lowest threshold wins the tie."""
    from sltnet.boxes import BEST_THRESHOLDS, ThresholdSweep

    assert BEST_THRESHOLDS[:3] == (0.05, 0.06, 0.07) and BEST_THRESHOLDS[-1] == 0.95 and len(BEST_THRESHOLDS) == 91
    m = torch.zeros(1, 10, 10)
    m[0, 2:8, 2:8] = 0.5
    m[0, 4:6, 4:6] = 1.0
    assert pseudo_boxes(m, 10, 0.49)[0].tolist() == [2, 2, 8, 8] and pseudo_boxes(m, 10, 0.5)[0].tolist() == [4, 4, 6, 6]
    sweep = ThresholdSweep(rule="zhou")
    sweep.update(m, [np.array([[2, 2, 8, 8]])])
    curve = sweep.curve()
    assert curve[:45] == [100.0] * 45 and curve[45:] == [0.0] * 46                  # 0.05..0.49, 0.50..0.95
    assert sweep.best() == (0.05, 100.0)
    core = ThresholdSweep(rule="zhou").merge(ThresholdSweep(rule="zhou").state())     # merging an empty state
    core.update(m, [np.array([[4, 4, 6, 6]])])
    assert core.best() == (0.5, 100.0)
    both = ThresholdSweep(rule="zhou").merge(sweep.state()).merge(core.state())
    assert set(both.curve()) == {50.0} and both.best() == (0.05, 50.0)
    # the choe rule (min-max, uint8) on the same map: the same two boxes, the same choice
    choe = ThresholdSweep(rule="choe")
    choe.update(m, [np.array([[2, 2, 8, 8]])])
    assert choe.best() == (0.05, 100.0)
