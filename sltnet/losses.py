"""SLT-Net losses and the top-K averaged CAM (Guo et al., CVPR 2021, Sec. 3).

* :func:`semantic_tolerance_loss` -- L_SMT, Eq. 8.
* :func:`top_k_cam` -- top-K ACAM, Eq. 9.
* :func:`visual_stimulus_tolerance_loss` -- L_VST, Eq. 13 (the transform and its inverse,
  Eq. 10-12, live in :mod:`sltnet.vst`).
* :func:`box_regression_loss` -- L_REG, Eq. 3-4.

Shapes: logits [B, C]; labels [B] (0-based); CAM stacks [B, C, h, w].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def label_in_top_k(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Bool [B]: the true class is among the ``k`` highest logits (``x_k in top-K(x)`` of Eq. 8).

    ``k`` is clipped to the number of classes. Ties are resolved as ``torch.topk`` does.
    """
    k = max(1, min(int(k), logits.shape[1]))
    top = logits.topk(k, dim=1).indices
    return (top == labels[:, None]).any(dim=1)


def semantic_tolerance_loss(logits: torch.Tensor, labels: torch.Tensor, *, alpha: float, k: int,
                            reduction: str = "mean") -> torch.Tensor:
    """L_SMT (Eq. 8): ``alpha * CE`` for an image whose true class is in the top-K, else ``CE``.

    With ``k=1, alpha=1`` this is plain cross entropy (the paper's remark under Eq. 8).
    The top-K membership is a hard, non-differentiable switch decided on the current logits.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"semantic_tolerance_loss: alpha must be in [0, 1], got {alpha}")
    ce = F.cross_entropy(logits.float(), labels, reduction="none")
    inside = label_in_top_k(logits.detach(), labels, k)
    loss = torch.where(inside, alpha * ce, ce)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}")


def top_k_classes(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [B, k] of the ``k`` highest logits, best first (``k`` clipped to C)."""
    k = max(1, min(int(k), logits.shape[1]))
    return logits.topk(k, dim=1).indices


def select_cams(cams: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Gather maps: cams [B, C, h, w], classes [B] or [B, k] -> [B, k, h, w]."""
    if classes.dim() == 1:
        classes = classes[:, None]
    index = classes[:, :, None, None].expand(-1, -1, cams.shape[2], cams.shape[3])
    return cams.gather(1, index)


def top_k_cam(cams: torch.Tensor, logits: torch.Tensor, k: int) -> torch.Tensor:
    """Top-K ACAM (Eq. 9): ``A = 1/K * sum_{j in top-K(logits)} M_j``, [B, C, h, w] -> [B, h, w].

    ``k=1`` gives the CAM of the top-1 predicted class.
    """
    return select_cams(cams, top_k_classes(logits, k)).mean(dim=1)


def visual_stimulus_tolerance_loss(cams_original: torch.Tensor, cams_inverted: torch.Tensor,
                                   valid: torch.Tensor | None = None) -> torch.Tensor:
    """L_VST (Eq. 13): squared error between M^o and M^it averaged over W x H.

    Both stacks are [B, K, h, w] (all C maps, or a selection: see :mod:`sltnet.vst`). The paper
    writes ``1/(WH) ||M^o - M^it||^2``; here the sum over W x H is divided by W x H and the result
    is averaged over maps and images (so the value does not grow with C or the batch size).
    ``valid`` ([B, 1, h, w] or broadcastable, 0/1) optionally excludes cells from the average.
    """
    if cams_original.shape != cams_inverted.shape:
        raise ValueError(f"L_VST: shapes differ {tuple(cams_original.shape)} vs {tuple(cams_inverted.shape)}")
    sq = (cams_original.float() - cams_inverted.float()).pow(2)
    if valid is None:
        return sq.mean()
    valid = valid.to(sq.dtype).expand_as(sq)
    return (sq * valid).sum() / valid.sum().clamp_min(1.0)


def box_regression_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_REG (Eq. 3-4): ``sum_{i=1..4} smooth_L1(p_i - p^_i)`` (threshold 1), averaged over images.

    ``pred`` and ``target`` are [B, 4] boxes normalised by the input size (see :mod:`sltnet.boxes`).
    """
    return F.smooth_l1_loss(pred.float(), target.float(), reduction="none", beta=1.0).sum(dim=1).mean()
