"""SPOL losses on hand-computed logits, and the seg target/ignore rule on a hand-made mask."""
import math

import torch

from spol.losses import (cub_cam_loss, imagenet_cam_loss, map_logits, seg_loss, seg_target_and_weight,
                         soft_cross_entropy)


def test_map_logits_is_spatial_mean():
    maps = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]], [[0.0, 0.0], [0.0, 4.0]]]])
    assert torch.allclose(map_logits(maps), torch.tensor([[4.0, 1.0]]))


def test_imagenet_cam_loss_is_cross_entropy():
    # logits (0, ln 3): softmax = (1/4, 3/4); label 1 -> -ln(3/4)
    logits = torch.tensor([[0.0, math.log(3.0)]])
    assert math.isclose(imagenet_cam_loss(logits, torch.tensor([1])).item(), -math.log(0.75), rel_tol=1e-6)


def test_soft_cross_entropy_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]])     # log softmax = (ln 1/4, ln 3/4)
    target = torch.tensor([[0.5, 0.5]])
    expected = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert math.isclose(soft_cross_entropy(logits, target).item(), expected, rel_tol=1e-6)


def test_cub_cam_loss_by_hand_and_teacher_is_detached():
    pred1 = torch.tensor([[0.0, math.log(3.0)]], requires_grad=True)  # softmax (1/4, 3/4)
    pred2 = torch.tensor([[math.log(3.0), 0.0]], requires_grad=True)  # log softmax (ln 3/4, ln 1/4)
    loss = cub_cam_loss(pred1, pred2, torch.tensor([0]))
    ce = -math.log(0.25)
    soft = -(0.25 * math.log(0.75) + 0.75 * math.log(0.25))
    assert math.isclose(loss.item(), (ce + soft) / 2, rel_tol=1e-6)
    loss.backward()
    # gradient w.r.t. pred1 comes from the hard CE only: (softmax - onehot) / 2
    assert torch.allclose(pred1.grad, torch.tensor([[(0.25 - 1) / 2, 0.75 / 2]]), atol=1e-6)
    # gradient w.r.t. pred2: (softmax(pred2) - teacher) / 2
    assert torch.allclose(pred2.grad, torch.tensor([[(0.75 - 0.25) / 2, (0.25 - 0.75) / 2]]), atol=1e-6)


def _mask():
    # 1x3x1x5 pseudo mask, channels (fore, gauss, zero):
    #   px0 fore .30       -> target 1, weight 1
    #   px1 gauss .26      -> target 1, weight 1
    #   px2 fore .005      -> target 0, weight 1 (confident background)
    #   px3 fore .10       -> target 0, weight 0 (ignored: uncertain)
    #   px4 fore .25 exactly, gauss .25 exactly -> not > .25 -> target 0, weight 0
    fore = [0.30, 0.02, 0.005, 0.10, 0.25]
    gauss = [0.0, 0.26, 0.0, 0.0, 0.25]
    return torch.tensor([fore, gauss, [0.0] * 5]).reshape(1, 3, 1, 5)


def test_seg_target_and_weight_rule():
    target, weight = seg_target_and_weight(_mask())
    assert target.flatten().tolist() == [1, 1, 0, 0, 0]
    assert weight.flatten().tolist() == [1, 1, 1, 0, 0]


def test_seg_loss_weighted_bce_ignores_weight_zero_pixels():
    logits = torch.zeros(1, 1, 1, 5)  # same size as the mask: resize is the identity
    loss = seg_loss(logits, _mask())
    # 3 counted pixels each BCE(0, y) = ln 2; mean over the 5 pixels
    assert math.isclose(loss.item(), 3 * math.log(2) / 5, rel_tol=1e-6)
    changed = torch.tensor([[[[0.0, 0.0, 0.0, 9.0, -9.0]]]])  # only ignored pixels differ
    assert math.isclose(seg_loss(changed, _mask()).item(), loss.item(), rel_tol=1e-6)


def test_seg_loss_resizes_logits_to_mask_size():
    mask = torch.zeros(1, 3, 8, 8)  # all confident background
    logits = torch.full((1, 1, 2, 2), -2.0)
    expected = math.log1p(math.exp(-2.0))  # BCE(-2, 0) everywhere
    assert math.isclose(seg_loss(logits, mask).item(), expected, rel_tol=1e-5)
