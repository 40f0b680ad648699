"""SPOL training losses and the segmentation target rule (reference behaviour, see spol/README.md).

* CAM stage, CUB (two heads): ``(CE(pred1, y) + softCE(pred2, softmax(pred1).detach())) / 2`` where
  ``pred1`` are the deep-only logits and ``pred2`` the fused (shallow x deep) logits.
* CAM stage, ImageNet (one head): ``CE(pred2, y)``.
* Seg stage: from a pseudo mask (channels in [0, 1]: foreground CAM, Gaussian prior)
  ``target = (fore > 0.25) | (gauss > 0.25)``, ``weight = target | (fore < 0.01)``; pixels with
  weight 0 are ignored; weighted BCE-with-logits, logits resized bilinearly to the mask size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

TARGET_THRESHOLD = 0.25
BACKGROUND_THRESHOLD = 0.01


def map_logits(class_maps: torch.Tensor) -> torch.Tensor:
    """Spatial mean of ``[B, K, h, w]`` class maps -> ``[B, K]`` logits."""
    return class_maps.mean(dim=(2, 3))


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Batch mean of ``-sum_k p_k log softmax(logits)_k`` (cross entropy with soft targets)."""
    return -(target_probs * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def cub_cam_loss(pred1: torch.Tensor, pred2: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Two-head CUB CAM loss on ``[B, K]`` logits: deep head learns the labels, fused head the deep
    head's (detached) softmax."""
    hard = F.cross_entropy(pred1, labels)
    soft = soft_cross_entropy(pred2, F.softmax(pred1, dim=1).detach())
    return (hard + soft) / 2


def imagenet_cam_loss(pred2: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Single-head ImageNet CAM loss: cross entropy of the fused logits."""
    return F.cross_entropy(pred2, labels)


def seg_target_and_weight(pseudo_mask: torch.Tensor, threshold: float = TARGET_THRESHOLD):
    """``pseudo_mask`` ``[B, C>=2, H, W]`` in [0, 1] (channel 0 foreground CAM, channel 1 Gaussian)
    -> ``(target, weight)`` float ``[B, 1, H, W]`` (weight 0 = ignored pixel)."""
    fore, gauss = pseudo_mask[:, 0:1], pseudo_mask[:, 1:2]
    target = (fore > threshold) | (gauss > threshold)
    weight = target | (fore < BACKGROUND_THRESHOLD)
    return target.float(), weight.float()


def seg_loss(logits: torch.Tensor, pseudo_mask: torch.Tensor, threshold: float = TARGET_THRESHOLD) -> torch.Tensor:
    """Weighted BCE-with-logits of ``[B, 1, h, w]`` logits against the pseudo-mask target.

    Logits are resized bilinearly (align_corners=True, like the model's own resizing) to the mask
    size; the mean runs over all pixels as in ``F.binary_cross_entropy_with_logits(weight=...)``
    (ignored pixels contribute 0).
    """
    target, weight = seg_target_and_weight(pseudo_mask, threshold)
    logits = F.interpolate(logits, size=target.shape[2:], mode="bilinear", align_corners=True)
    return F.binary_cross_entropy_with_logits(logits.float(), target, weight=weight)
