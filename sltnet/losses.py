"""SLT-Net losses and the top-K averaged CAM (Guo et al., CVPR 2021, Sec. 3).

* :func:`semantic_tolerance_loss` -- L_SMT, Eq. 8 (``variant="eq8"``); ``variant="exclude-topk"`` is
  a named deviation (the other top-K classes left out of the softmax), not the paper's equation.
* :func:`top_k_cam` -- top-K ACAM, Eq. 9; :func:`localization_map` -- it, or the ground-truth
  class's CAM with ACAM off, or (``teacher=``) the top-K ACAM with the label forced among the K
  classes (:func:`top_k_cam_with_label`, not the paper's) or the labelled class's CAM: the map the
  boxes are read from.
* :func:`visual_stimulus_tolerance_loss` -- L_VST, Eq. 13 (the transform and its inverse,
  Eq. 10-12, live in :mod:`sltnet.vst`).
* :func:`box_regression_loss` -- L_REG, Eq. 3-4.

Shapes: logits [B, C]; labels [B] (0-based); CAM stacks [B, C, h, w].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sltnet.options import SMT_VARIANTS, TEACHER_MAPS  # the names the command line offers


def label_in_top_k(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Bool [B]: the true class is among the ``k`` highest scores (``x_k in top-K(x)`` of Eq. 8).

    Eq. 8 tests the true class's SCORE against the top-K scores, so a tie with the K-th score
    counts as inside: the true class is in the top-K when fewer than ``k`` classes score strictly
    higher (``x_k >= the K-th highest score``). This does not depend on how ``torch.topk`` orders
    equal values. ``k`` is clipped to the number of classes.
    """
    k = max(1, min(int(k), logits.shape[1]))
    true_score = logits.gather(1, labels[:, None])
    return (logits > true_score).sum(dim=1) < k


def other_top_k_mask(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Bool [B, C]: the classes other than the true one that score at least the K-th highest score.

    Without ties these are the K-1 other classes of the top-K when the true class is among them (K
    when it is not); a tie at the K-th score puts every tied class in (as :func:`label_in_top_k`
    counts a tie as inside), whatever order ``torch.topk`` gives equal values.
    """
    k = max(1, min(int(k), logits.shape[1]))
    kth = logits.topk(k, dim=1).values[:, k - 1:k]
    mask = logits >= kth
    return mask.scatter(1, labels[:, None], False)


def semantic_tolerance_loss(logits: torch.Tensor, labels: torch.Tensor, *, alpha: float, k: int,
                            reduction: str = "mean", variant: str = "eq8") -> torch.Tensor:
    """L_SMT (Eq. 8): ``alpha * CE`` for an image whose true class is in the top-K, else ``CE``.

    With ``k=1, alpha=1`` this is plain cross entropy (the paper's remark under Eq. 8).
    The top-K membership is a hard, non-differentiable switch decided on the current logits.

    ``variant="exclude-topk"`` is NOT Eq. 8: for an image whose true class is in the top-K (the
    same test, :func:`label_in_top_k`), the cross entropy is taken over a softmax from which the
    other top-K classes (:func:`other_top_k_mask`) are left out, ``alpha * (-x_y + log sum_{c not
    in top-K \\ {y}} exp x_c)``, so those classes get no gradient: the model is not pushed to tell
    the true class from its K-1 most similar ones, which is what the paper's text motivates ("does
    not need to distinguish one category from its K-1 most similar") and Eq. 8 does not do (inside
    the top-K it is alpha times the full cross entropy, gradient direction unchanged). alpha scales
    it as in Eq. 8; outside the top-K it is plain CE, as in Eq. 8.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"semantic_tolerance_loss: alpha must be in [0, 1], got {alpha}")
    if variant not in SMT_VARIANTS:
        raise ValueError(f"unknown L_SMT variant {variant!r} ({' | '.join(SMT_VARIANTS)})")
    logits = logits.float()
    ce = F.cross_entropy(logits, labels, reduction="none")
    inside = label_in_top_k(logits.detach(), labels, k)
    if variant == "exclude-topk":
        # the other top-K classes of an image whose label is inside leave its softmax (logit -> -inf)
        left_out = other_top_k_mask(logits.detach(), labels, k) & inside[:, None]
        tolerant = F.cross_entropy(logits.masked_fill(left_out, float("-inf")), labels, reduction="none")
        loss = torch.where(inside, alpha * tolerant, ce)
    else:
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


def top_k_classes_with_label(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """:func:`top_k_classes` [B, k] with the label forced in: where the label is not among the K
    indices ``torch.topk`` returns, it replaces the K-th (lowest-scoring) of them."""
    classes = top_k_classes(logits, k).clone()
    missing = ~(classes == labels[:, None]).any(dim=1)
    classes[missing, -1] = labels[missing]
    return classes


def top_k_cam_with_label(cams: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Top-K ACAM (Eq. 9) whose K classes include the known label (:func:`top_k_classes_with_label`):
    ``1/K * sum_j M_j`` over them, [B, C, h, w] -> [B, h, w]. Not the paper's map: it needs the label,
    which training images (the standalone regressor's teacher boxes) carry."""
    return select_cams(cams, top_k_classes_with_label(logits, labels, k)).mean(dim=1)


def localization_map(cams: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor | None, *,
                     acam: bool, top_k: int, teacher: str = "acam") -> torch.Tensor:
    """[B, h, w]: the map the boxes are read from.

    ``teacher="acam"`` (default): top-K ACAM (Eq. 9) or, with ``acam`` off, the CAM of the
    ground-truth class (of the top-1 class when ``labels`` is None). ``"acam-label"``: top-K ACAM
    with the label among the K classes (:func:`top_k_cam_with_label`; needs ``acam``). ``"gt"``:
    the labelled class's CAM, whatever ``acam``.
    """
    if teacher not in TEACHER_MAPS:
        raise ValueError(f"unknown teacher map {teacher!r} ({' | '.join(TEACHER_MAPS)})")
    if teacher == "acam-label":
        if not acam:
            raise ValueError("teacher map acam-label is a top-K ACAM: it contradicts acam off")
        if labels is None:
            raise ValueError("teacher map acam-label needs the labels")
        return top_k_cam_with_label(cams, logits, labels, top_k)
    if teacher == "acam" and acam:
        return top_k_cam(cams, logits, top_k)
    if labels is None:
        if teacher == "gt":
            raise ValueError("teacher map gt needs the labels")
        labels = logits.argmax(dim=1)
    return select_cams(cams, labels)[:, 0]


VST_REDUCTIONS = ("eq13", "mean")


def visual_stimulus_tolerance_loss(cams_original: torch.Tensor, cams_inverted: torch.Tensor,
                                   valid: torch.Tensor | None = None, *, reduction: str = "eq13") -> torch.Tensor:
    """L_VST (Eq. 13): ``1/(W x H) * ||M^o - M^it||_2^2`` with ``M in R^{W x H x C}``.

    Both stacks are [B, C, h, w] (all C maps, or a selection: see :mod:`sltnet.vst`).

    * ``reduction="eq13"`` (default, the letter of Eq. 13): the squared differences are SUMMED
      over the C maps and the positions, divided by W x H (the number of positions of ONE map),
      then averaged over the batch.
    * ``reduction="mean"``: the mean over maps as well, i.e. Eq. 13 divided by C (a named
      option, never the default: with C = 200 / 1000 it weighs L_VST 200 / 1000 times less).

    ``valid`` ([B or 1, 1, h, w], 0/1) excludes positions (the border cells that the inverse of
    a down-scaled copy extrapolates, :func:`sltnet.vst.valid_after_inverse`): the sum then runs
    over the valid positions and is divided by their number instead of W x H.
    """
    if cams_original.shape != cams_inverted.shape:
        raise ValueError(f"L_VST: shapes differ {tuple(cams_original.shape)} vs {tuple(cams_inverted.shape)}")
    if reduction not in VST_REDUCTIONS:
        raise ValueError(f"unknown L_VST reduction {reduction!r} ({' | '.join(VST_REDUCTIONS)})")
    sq = (cams_original.float() - cams_inverted.float()).pow(2)
    b, c, h, w = sq.shape
    if valid is None:
        positions = torch.full((b,), float(h * w), device=sq.device)
        per_image = sq.sum(dim=(1, 2, 3))
    else:
        valid = valid.to(device=sq.device, dtype=sq.dtype)
        if valid.dim() != 4 or valid.shape[1] != 1:
            raise ValueError(f"L_VST: valid must be [B or 1, 1, h, w], got {tuple(valid.shape)}")
        valid = valid.expand(b, 1, h, w)
        positions = valid.sum(dim=(1, 2, 3)).clamp_min(1.0)
        per_image = (sq * valid).sum(dim=(1, 2, 3))
    loss = per_image / positions            # Eq. 13 per image: sum over C and positions / (W x H)
    if reduction == "mean":
        loss = loss / c
    return loss.mean()


def box_regression_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_REG (Eq. 3-4): ``sum_{i=1..4} smooth_L1(p_i - p^_i)`` (threshold 1), averaged over images.

    ``pred`` and ``target`` are [B, 4] boxes ``p`` (pixels divided by m, Sec. 3.1, or by the input size;
    see :mod:`sltnet.boxes`).
    """
    return F.smooth_l1_loss(pred.float(), target.float(), reduction="none", beta=1.0).sum(dim=1).mean()
