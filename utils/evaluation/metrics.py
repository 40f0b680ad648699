"""The metrics' building blocks: score map checks, IoU (inclusive, exclusive, the SPOL authors'),
``LocalizationMeter`` (GT-known / Top-k Loc at one threshold), the threshold sweep of MaxBoxAcc(V2)
(``LevelSweep``, ``BoxAccumulator``; Choe et al.'s per-threshold loop kept as the reference) and
``PxAPAccumulator``. Definitions: [docs/evaluation.md](../../docs/evaluation.md).
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import cv2
import numpy as np
import torch

from utils.evaluation.box_sweep import level_boxes
from utils.evaluation.boxes import choe_threshold_levels, quantize_scoremap
from utils.errors import DataError

IOU_COMPARES = (">=", ">")


# ----------------------------------------------------------------------------- validity
def check_scoremap_validity(scoremap, path: str | os.PathLike | None = None) -> None:
    """Raise DataError naming ``path`` unless ``scoremap`` is a finite 2-D ndarray within [0, 1]."""
    where = path if path is not None else "<score map>"
    if not isinstance(scoremap, np.ndarray):
        raise DataError.at(where, None, f"score map must be a numpy array, got {type(scoremap).__name__}")
    if scoremap.ndim != 2:
        raise DataError.at(where, None, f"score map must be 2-D (H, W), got shape {scoremap.shape}")
    if not (np.issubdtype(scoremap.dtype, np.floating) or np.issubdtype(scoremap.dtype, np.integer)
            or scoremap.dtype == np.bool_):
        raise DataError.at(where, None, f"score map must be numeric, got dtype {scoremap.dtype}")
    if scoremap.size == 0:
        raise DataError.at(where, None, f"score map is empty (shape {scoremap.shape})")
    if not np.isfinite(scoremap).all():
        raise DataError.at(where, None, "score map contains NaN or inf")
    lo, hi = scoremap.min(), scoremap.max()
    if lo < 0 or hi > 1:
        raise DataError.at(where, None, f"score map values must lie in [0, 1], got min {lo} max {hi}")


# ----------------------------------------------------------------------------- IoU
def box_iou(a, b, *, inclusive: bool):
    """IoU matrix (N, M) between boxes ``a`` (N, 4) and ``b`` (M, 4), ``x0, y0, x1, y1``.

    ``inclusive=True`` adds +1 to widths and heights (Choe et al.); ``inclusive=False`` equals
    ``torchvision.ops.box_iou``. Numpy in -> float64 numpy out; torch in -> torch out.
    """
    as_torch = isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor)
    ref = a if isinstance(a, torch.Tensor) else b
    a_np = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b_np = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    a_np = a_np.astype(np.float64).reshape(-1, 4)
    b_np = b_np.astype(np.float64).reshape(-1, 4)
    one = 1.0 if inclusive else 0.0
    x0 = np.maximum(a_np[:, None, 0], b_np[None, :, 0])
    y0 = np.maximum(a_np[:, None, 1], b_np[None, :, 1])
    x1 = np.minimum(a_np[:, None, 2], b_np[None, :, 2])
    y1 = np.minimum(a_np[:, None, 3], b_np[None, :, 3])
    inter = np.maximum(0.0, x1 - x0 + one) * np.maximum(0.0, y1 - y0 + one)
    area_a = (a_np[:, 2] - a_np[:, 0] + one) * (a_np[:, 3] - a_np[:, 1] + one)
    area_b = (b_np[:, 2] - b_np[:, 0] + one) * (b_np[:, 3] - b_np[:, 1] + one)
    union = area_a[:, None] + area_b[None, :] - inter
    degenerate = union <= 0
    iou = inter / np.where(degenerate, 1.0, union)
    iou[degenerate] = 0.0
    if as_torch:
        return torch.from_numpy(iou).to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else torch.float64)
    return iou


def _compare(values: np.ndarray, threshold: float, compare: str) -> np.ndarray:
    if compare == ">=":
        return values >= threshold
    if compare == ">":
        return values > threshold
    raise ValueError(f"iou_compare must be one of {IOU_COMPARES}, got {compare!r}")


def _as_bool_array(x, n: int, name: str):
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x).astype(bool).reshape(-1)
    if x.shape[0] != n:
        raise ValueError(f"{name} has {x.shape[0]} entries for {n} images")
    return x


def _as_boxes(x) -> np.ndarray:
    if x is None:
        return np.zeros((0, 4))
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(-1, 4) if x.size else np.zeros((0, 4))


# ----------------------------------------------------------------------------- Loc meter
class LocalizationMeter:
    """Top-1 / Top-5 / GT-known Loc (percent) at one IoU threshold.

    GT-known hit: the best IoU between the image's predicted box(es) and its GT boxes passes the
    threshold (``iou_compare`` ">=" default, the WSOL convention; ">" as SPOL's scripts).
    Top-k Loc hit: GT-known hit AND the classifier's top-k is correct. Every image counts in the
    denominator; no GT box left, no predicted box, or the no-foreground sentinel box
    ``[0, 0, 0, 0]`` from :func:`utils.evaluation.boxes.boxes_from_maps` are misses.
    """

    def __init__(self, iou_threshold: float = 0.5, iou_compare: str = ">=", inclusive_iou: bool = True):
        if iou_compare not in IOU_COMPARES:
            raise ValueError(f"iou_compare must be one of {IOU_COMPARES}, got {iou_compare!r}")
        self.iou_threshold = float(iou_threshold)
        self.iou_compare = iou_compare
        self.inclusive_iou = bool(inclusive_iou)
        self.num_images = 0
        self.gt_known_hits = 0
        self.top1_hits = 0
        self.top5_hits = 0
        self.num_with_cls = 0  # images that came with classification flags

    def best_ious(self, pred_boxes, gt_boxes) -> np.ndarray:
        """Best IoU per image (0 for a miss by construction)."""
        out = np.zeros(len(gt_boxes))
        for i, (pred, gt) in enumerate(zip(pred_boxes, gt_boxes)):
            pred = _as_boxes(pred)
            pred = pred[np.any(pred != 0, axis=1)]  # drop the no-foreground sentinel
            gt = _as_boxes(gt)
            if len(pred) and len(gt):
                out[i] = box_iou(pred, gt, inclusive=self.inclusive_iou).max()
        return out

    def update(self, pred_boxes, gt_boxes, top1_correct=None, top5_correct=None) -> np.ndarray:
        """Add a batch. ``pred_boxes``: (B, 4) or a list of per-image (n_i, 4) arrays (best box wins).

        ``gt_boxes``: list of per-image (n_i, 4). Returns the GT-known hits (bool [B]).
        """
        if isinstance(pred_boxes, torch.Tensor):
            pred_boxes = pred_boxes.detach().cpu().numpy()
        if isinstance(pred_boxes, np.ndarray) and pred_boxes.ndim == 2:
            pred_boxes = list(pred_boxes)
        pred_boxes, gt_boxes = list(pred_boxes), list(gt_boxes)
        n = len(gt_boxes)
        if len(pred_boxes) != n:
            raise ValueError(f"{len(pred_boxes)} predicted boxes for {n} images")
        t1 = _as_bool_array(top1_correct, n, "top1_correct")
        t5 = _as_bool_array(top5_correct, n, "top5_correct")
        if (t1 is None) != (t5 is None):
            raise ValueError("give both top1_correct and top5_correct, or neither")
        hits = _compare(self.best_ious(pred_boxes, gt_boxes), self.iou_threshold, self.iou_compare)
        self.num_images += n
        self.gt_known_hits += int(hits.sum())
        if t1 is not None:
            self.num_with_cls += n
            self.top1_hits += int((hits & t1).sum())
            self.top5_hits += int((hits & t5).sum())
        return hits

    def compute(self) -> dict:
        """Percentages; top1_loc / top5_loc are None when no classification flags were given."""
        n = self.num_images
        if self.num_with_cls not in (0, n):
            raise ValueError(f"classification flags given for {self.num_with_cls} of {n} images")
        pct = (lambda h: 100.0 * h / n) if n else (lambda h: float("nan"))
        has_cls = n > 0 and self.num_with_cls == n
        return {"gt_known_loc": pct(self.gt_known_hits),
                "top1_loc": pct(self.top1_hits) if has_cls else None,
                "top5_loc": pct(self.top5_hits) if has_cls else None,
                "num_images": n}

    def state(self) -> dict:
        return {"num_images": self.num_images, "gt_known_hits": self.gt_known_hits,
                "top1_hits": self.top1_hits, "top5_hits": self.top5_hits, "num_with_cls": self.num_with_cls}

    def merge(self, other) -> "LocalizationMeter":
        """Add another meter (or its ``state()``), e.g. the states gathered from every rank."""
        st = other.state() if isinstance(other, LocalizationMeter) else other
        for key, value in st.items():
            setattr(self, key, getattr(self, key) + int(value))
        return self


# ----------------------------------------------------------------------------- MaxBoxAcc
def cam_threshold_list(cam_curve_interval: float = 0.001) -> list:
    """Choe et al.'s thresholds ``list(np.arange(0, 1, cam_curve_interval))``."""
    return list(np.arange(0, 1, cam_curve_interval))


def _prepare_gt(gt_boxes) -> np.ndarray:
    return _as_boxes(gt_boxes)


class LevelSweep:
    """Choe et al.'s boxes of one score map at every threshold of a list, found once per distinct level.

    The binary map ``uint8 map > int(t * max)`` only depends on the level ``int(t * max)``, so the
    boxes are found once per distinct level, all levels in one pass over the map
    (:func:`utils.evaluation.box_sweep.level_boxes`: the component trees of the map's level sets,
    identical to cv2's contours level by level). ``levels`` (distinct, ascending), ``level_of``
    (per threshold, the index of its level) and ``boxes`` ({mode: (boxes (N, 4), level index (N,))},
    mode False = the largest contour, True = every contour).
    """

    def __init__(self, scoremap: np.ndarray, thresholds: Sequence[float], modes: tuple[bool, ...]):
        image = quantize_scoremap(scoremap)
        self.max_value = int(image.max())
        self.levels, level_of = np.unique(choe_threshold_levels(self.max_value, thresholds), return_inverse=True)
        self.level_of = level_of.reshape(-1)
        self.boxes = level_boxes(image, self.levels, modes)

    def best_ious(self, gt: np.ndarray, multi_contour: bool) -> np.ndarray:
        """float64 [T]: per threshold, the best inclusive IoU of the mode's boxes with the GT boxes."""
        if len(gt) == 0:
            return np.zeros(len(self.level_of))
        level_box, level_index = self.boxes[multi_contour]
        best = np.full(len(self.levels), -np.inf)
        np.maximum.at(best, level_index, box_iou(level_box, gt, inclusive=True).max(axis=1))
        return best[self.level_of]

    def largest_boxes(self) -> np.ndarray:
        """int64 (levels, 4): the largest contour's box at each level (``[0, 0, 0, 0]`` without contour)."""
        level_box, level_index = self.boxes[False]
        out = np.zeros((len(self.levels), 4), dtype=np.int64)
        out[level_index] = level_box
        return out


def best_iou_per_threshold(scoremap: np.ndarray, gt_boxes, thresholds: Sequence[float],
                           multi_contour=(False,)) -> dict[bool, np.ndarray]:
    """Choe et al.'s per-threshold IoU (max over boxes x GT boxes), computed fast (:class:`LevelSweep`).

    ``multi_contour`` is a bool or a tuple of bools; one pass serves every mode. Returns
    {multi_contour flag: float64 [T] best IoU}.
    """
    modes = (multi_contour,) if isinstance(multi_contour, (bool, np.bool_)) else tuple(multi_contour)
    modes = tuple(bool(m) for m in modes)
    sweep = LevelSweep(scoremap, thresholds, modes)
    gt = _prepare_gt(gt_boxes)
    return {m: sweep.best_ious(gt, m) for m in modes}


def reference_compute_bboxes_from_scoremaps(scoremap, scoremap_threshold_list, multi_contour_eval=False):
    """Straightforward per-threshold loop, written as Choe et al.'s function (tests/benchmark only)."""
    height, width = scoremap.shape
    scoremap_image = np.expand_dims((np.asarray(scoremap, dtype=np.float64) * 255).astype(np.uint8), 2)
    boxes_at_thresholds, number_of_boxes = [], []
    for threshold in scoremap_threshold_list:
        _, thr_gray_heatmap = cv2.threshold(src=scoremap_image, thresh=int(threshold * np.max(scoremap_image)),
                                            maxval=255, type=cv2.THRESH_BINARY)
        contours = cv2.findContours(image=thr_gray_heatmap, mode=cv2.RETR_TREE,
                                    method=cv2.CHAIN_APPROX_SIMPLE)[0]
        if len(contours) == 0:
            boxes_at_thresholds.append(np.asarray([[0, 0, 0, 0]]))
            number_of_boxes.append(1)
            continue
        if not multi_contour_eval:
            contours = [max(contours, key=cv2.contourArea)]
        boxes = []
        for contour in contours:
            x, y, w, h = cv2.boundingRect(contour)
            boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
        boxes_at_thresholds.append(np.asarray(boxes))
        number_of_boxes.append(len(contours))
    return boxes_at_thresholds, number_of_boxes


def reference_best_iou_per_threshold(scoremap, gt_boxes, thresholds, multi_contour: bool = False) -> np.ndarray:
    """Per-threshold best IoU by the straightforward loop (Choe et al.'s ``accumulate``)."""
    boxes, counts = reference_compute_bboxes_from_scoremaps(scoremap, thresholds, multi_contour)
    gt = _prepare_gt(gt_boxes)
    if len(gt) == 0:
        return np.zeros(len(thresholds))
    multiple_iou = box_iou(np.concatenate(boxes, axis=0), gt, inclusive=True)
    sliced, idx = [], 0
    for nr_box in counts:
        sliced.append(max(multiple_iou.max(1)[idx:idx + nr_box]))
        idx += nr_box
    return np.asarray(sliced)


class BoxAccumulator:
    """MaxBoxAcc over a threshold sweep, Choe et al.'s BoxEvaluator exactly.

    ``BoxAccumulator(iou_thresholds=(50,), multi_contour=False)`` is MaxBoxAcc;
    the defaults ``(30, 50, 70), multi_contour=True`` are MaxBoxAccV2 (mean of the three).
    An image is correct at a threshold when its best IoU >= iou / 100. ``fast=False`` uses the
    straightforward per-threshold loop (same numbers, for tests and the benchmark).
    """

    def __init__(self, cam_curve_interval: float = 0.001, iou_thresholds: Iterable[int] = (30, 50, 70),
                 multi_contour: bool = True, *, fast: bool = True):
        self.cam_curve_interval = cam_curve_interval
        self.thresholds = cam_threshold_list(cam_curve_interval)
        self.iou_thresholds = tuple(int(i) for i in iou_thresholds)
        self.multi_contour = bool(multi_contour)
        self.fast = fast
        self.cnt = 0
        self.num_correct = {iou: np.zeros(len(self.thresholds)) for iou in self.iou_thresholds}

    def image_ious(self, scoremap, gt_boxes) -> np.ndarray:
        if self.fast:
            return best_iou_per_threshold(scoremap, gt_boxes, self.thresholds, self.multi_contour)[self.multi_contour]
        return reference_best_iou_per_threshold(scoremap, gt_boxes, self.thresholds, self.multi_contour)

    def accumulate(self, scoremap, gt_boxes, *, path=None) -> None:
        """Add one image: its score map (H, W) in [0, 1] and its GT boxes (n, 4) in map pixels."""
        if isinstance(scoremap, torch.Tensor):
            scoremap = scoremap.detach().cpu().numpy()
        check_scoremap_validity(scoremap, path)
        self.accumulate_ious(self.image_ious(scoremap, gt_boxes))

    def accumulate_ious(self, ious: np.ndarray) -> None:
        """Add one image from its precomputed per-threshold best IoU (len T)."""
        ious = np.asarray(ious)
        if ious.shape != (len(self.thresholds),):
            raise ValueError(f"expected {len(self.thresholds)} per-threshold IoUs, got shape {ious.shape}")
        for iou in self.iou_thresholds:
            self.num_correct[iou][ious >= (iou / 100)] += 1
        self.cnt += 1

    def compute(self) -> dict:
        """Per IoU: max accuracy (percent), best threshold (first argmax), accuracy curve."""
        if self.cnt == 0:
            raise ValueError("BoxAccumulator.compute() called before any image was accumulated")
        out = {"num_images": self.cnt, "thresholds": [float(t) for t in self.thresholds],
               "max_box_acc": {}, "best_threshold": {}, "best_threshold_index": {}, "curve": {}}
        for iou in self.iou_thresholds:
            acc = self.num_correct[iou] * 100. / float(self.cnt)
            best = int(np.argmax(acc))
            out["max_box_acc"][iou] = float(acc.max())
            out["best_threshold"][iou] = float(self.thresholds[best])
            out["best_threshold_index"][iou] = best
            out["curve"][iou] = acc
        out["mean_max_box_acc"] = float(np.mean([out["max_box_acc"][i] for i in self.iou_thresholds]))
        return out

    def state(self) -> dict:
        return {"cnt": self.cnt, "num_correct": {k: v.copy() for k, v in self.num_correct.items()}}

    def merge(self, other) -> "BoxAccumulator":
        st = other.state() if isinstance(other, BoxAccumulator) else other
        self.cnt += int(st["cnt"])
        for k, v in st["num_correct"].items():
            self.num_correct[int(k)] += np.asarray(v)
        return self


# ----------------------------------------------------------------------------- PxAP
def mask_foreground(raw_mask: np.ndarray) -> np.ndarray:
    """Foreground of a raw grayscale GT mask: value > 0.5, as Choe et al.'s ``get_mask``.

    On CUB the segmentations are soft (0..255, the fraction of annotators); any pixel marked by
    at least one annotator is foreground under this rule.
    """
    return np.asarray(raw_mask) > 0.5


class PxAPAccumulator:
    """Pixel average precision (PxAP), Choe et al.'s MaskEvaluator exactly.

    Histograms of map scores over GT-foreground and GT-background pixels on the bins
    ``[0, bw), ..., [1 - bw, 1), [1, 2), [2, 3)`` (``np.histogram`` edges
    ``cam_threshold_list + [1, 2, 3]``); AP = sum over thresholds of precision x recall step.
    """

    def __init__(self, cam_curve_interval: float = 0.001):
        self.cam_curve_interval = cam_curve_interval
        self.thresholds = cam_threshold_list(cam_curve_interval)
        self.threshold_list_right_edge = np.append(self.thresholds, [1.0, 2.0, 3.0])
        self.num_bins = len(self.thresholds) + 2
        self.gt_true_score_hist = np.zeros(self.num_bins, dtype=np.float64)
        self.gt_false_score_hist = np.zeros(self.num_bins, dtype=np.float64)

    def accumulate(self, scoremap, gt_mask, ignore_mask=None, *, path=None) -> None:
        """``gt_mask``: same size as the map; foreground = value > 0.5 (bool, 0/1 or raw 0..255).

        ``ignore_mask`` (optional, same size): background pixels there are left out.
        """
        if isinstance(scoremap, torch.Tensor):
            scoremap = scoremap.detach().cpu().numpy()
        check_scoremap_validity(scoremap, path)
        scoremap = np.asarray(scoremap, dtype=np.float64)
        fg = mask_foreground(gt_mask)
        if fg.shape != scoremap.shape:
            raise DataError.at(path or "<mask>", None,
                               f"GT mask shape {fg.shape} differs from score map shape {scoremap.shape}")
        bg = ~fg
        if ignore_mask is not None:
            bg &= ~(np.asarray(ignore_mask) > 0.5)
        true_hist, _ = np.histogram(scoremap[fg], bins=self.threshold_list_right_edge)
        false_hist, _ = np.histogram(scoremap[bg], bins=self.threshold_list_right_edge)
        self.gt_true_score_hist += true_hist.astype(np.float64)
        self.gt_false_score_hist += false_hist.astype(np.float64)

    def compute(self) -> dict:
        """{"pxap": percent, "precision": [T+3], "recall": [T+3]} (curves from threshold >= 2 down to >= 0)."""
        num_gt_true = self.gt_true_score_hist.sum()
        tp = self.gt_true_score_hist[::-1].cumsum()
        fn = num_gt_true - tp
        fp = self.gt_false_score_hist[::-1].cumsum()
        if ((tp + fn) <= 0).all():
            raise ValueError("PxAP: no positive ground-truth pixel in the evaluated masks")
        if ((tp + fp) <= 0).all():
            raise ValueError("PxAP: no positive prediction in the evaluated score maps")
        non_zero_indices = (tp + fp) != 0
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = tp / (tp + fp)
            recall = tp / (tp + fn)
        auc = (precision[1:] * np.diff(recall))[non_zero_indices[1:]].sum()
        auc *= 100
        return {"pxap": float(auc), "precision": precision, "recall": recall}

    def state(self) -> dict:
        return {"gt_true_score_hist": self.gt_true_score_hist.copy(),
                "gt_false_score_hist": self.gt_false_score_hist.copy()}

    def merge(self, other) -> "PxAPAccumulator":
        st = other.state() if isinstance(other, PxAPAccumulator) else other
        self.gt_true_score_hist += np.asarray(st["gt_true_score_hist"])
        self.gt_false_score_hist += np.asarray(st["gt_false_score_hist"])
        return self


# ----------------------------------------------------------------------------- SPOL's IoU
def spol_iou(a, b, eps: float = 1e-12) -> float:
    """IoU as the SPOL authors compute it (``utils/tools.py: IoU``): exclusive coordinates
    (``width = x1 - x0``), 0 when the boxes do not overlap, ``inter / (union + eps)``; python floats,
    the same operations in the same order. With their ``eps = 1e-12`` an IoU of exactly one half
    computes as 0.4999999999999995, so ``>= 0.5`` would still reject it: our ``center_crop`` (``spol``) protocol uses
    ``eps=0``."""
    xmin_a, ymin_a, xmax_a, ymax_a = (float(v) for v in a)
    xmin_b, ymin_b, xmax_b, ymax_b = (float(v) for v in b)
    width = min(xmax_a, xmax_b) - max(xmin_a, xmin_b)
    height = min(ymax_a, ymax_b) - max(ymin_a, ymin_b)
    if width <= 0 or height <= 0:
        return 0
    sa = (xmax_a - xmin_a) * (ymax_a - ymin_a)
    sb = (xmax_b - xmin_b) * (ymax_b - ymin_b)
    inter = width * height
    union = sa + sb - inter
    return inter / (union + eps)
