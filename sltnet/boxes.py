"""SLT-Net's box encodings: pixel boxes ``x0, y0, x1, y1`` in input pixels of the image the network
saw (``x1 = min(x0 + w, W - 1)``, Choe et al.'s inclusive IoU), the regressor's ``p`` (box / m, Sec.
3.1: :func:`box_divisor`, :func:`normalize_boxes`), pseudo boxes from localization maps
(:func:`pseudo_boxes`), ``boxes.csv`` boxes as image fractions (:func:`boxes_to_image_fraction`) and
the GT-known Loc of every threshold of a grid (:class:`ThresholdSweep`, ``--box-threshold best``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sltnet.options import BOX_RULES, BOX_SCALES  # the names the command line offers
from utils.evaluation.boxes import boxes_from_maps, boxes_from_maps_zhou, normalize_minmax, resize_maps
from utils.errors import DataError
from utils.evaluation.metrics import LocalizationMeter
from utils.evaluation.protocol import get_protocol

# the thresholds --box-threshold best chooses from (fractions of the map's max): 0.05, 0.06, ..., 0.95
BEST_THRESHOLDS = tuple(round(0.05 + 0.01 * i, 2) for i in range(91))


def _size_vector(size, like):
    """(W, H, W, H) for ``size`` = int or (width, height)."""
    w, h = (size, size) if isinstance(size, (int, float)) else size
    if isinstance(like, torch.Tensor):
        return torch.tensor([w, h, w, h], dtype=like.dtype if like.is_floating_point() else torch.float32,
                            device=like.device)
    return np.array([w, h, w, h], dtype=np.float64)


def box_divisor(box_scale: str, input_size, stride: float):
    """What the regressor's box is divided by: ``stride`` (= m) for ``box_scale="stride"``, the input
    size (int or (width, height)) for ``"input"`` (every coordinate then in [0, 1]). ``ValueError``
    for another scale or a stride that is not positive.

    The regressor predicts ``p = (x1/m, y1/m, x2/m, y2/m)``; Sec. 3.1: "(x1, y1) are the top-left
    coordinate of the bounding box, (x2, y2) are the bottom-right coordinate of the bounding box, and m
    is the downsampling factor": here the localizer's CAM stride (16 for VGG16 conv5, so a 224 input's
    14 x 14 map gives coordinates on that grid, 0 .. 14)."""
    if box_scale == "stride":
        if stride is None or float(stride) <= 0:
            raise ValueError(f"box scale 'stride' needs a positive downsampling factor, got {stride!r}")
        return float(stride)
    if box_scale == "input":
        return input_size
    raise ValueError(f"unknown box scale {box_scale!r} ({' | '.join(BOX_SCALES)})")


def normalize_boxes(boxes, size):
    """Pixel boxes [..., 4] -> boxes divided by ``size`` = a number (m, or a square input side) or
    (width, height); see :func:`box_divisor`."""
    if isinstance(boxes, torch.Tensor):
        return boxes.float() / _size_vector(size, boxes.float())
    return np.asarray(boxes, dtype=np.float64) / _size_vector(size, None)


def denormalize_boxes(boxes, size):
    """Inverse of :func:`normalize_boxes`: normalised boxes [..., 4] -> pixel boxes (float)."""
    if isinstance(boxes, torch.Tensor):
        return boxes.float() * _size_vector(size, boxes.float())
    return np.asarray(boxes, dtype=np.float64) * _size_vector(size, None)


def maps_to_boxes(maps, threshold: float, rule: str = "zhou") -> list[np.ndarray]:
    """Boxes of maps already at the input size, [B, H, W] -> B arrays (1, 4), by the named rule."""
    if rule == "zhou":
        return boxes_from_maps_zhou(maps, threshold)
    if rule == "choe":
        return boxes_from_maps(normalize_minmax(maps), threshold)
    raise ValueError(f"unknown box rule {rule!r} ({' | '.join(BOX_RULES)})")


@torch.no_grad()
def pseudo_boxes(maps: torch.Tensor, input_size, threshold: float, rule: str = "zhou") -> np.ndarray:
    """Boxes [B, 4] (input pixels, int) from localization maps [B, h, w].

    Maps are upsampled to the input size (bilinear) and boxed by ``rule``: ``"zhou"`` (CAM's rule,
    which Sec. 3.2 cites: "segments the regions with the top 20% values and chose the bounding box
    that covers the largest connected component": values above ``threshold`` of the raw map's max,
    largest connected component) or ``"choe"`` (min-max normalised, then Choe et al.'s uint8 rule, the
    evaluator's ``wsol`` protocol). An empty map gives [0, 0, 0, 0].
    """
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)  # (H, W)
    resized = resize_maps(maps.detach().float(), size).cpu()
    return np.stack([b[0] for b in maps_to_boxes(resized, threshold, rule)]).astype(np.int64)


def boxes_to_image_fraction(box, meta: dict, path) -> list[float]:
    """A boxes.csv box (protocol input pixels, see its boxes.json) -> fractions of the original image."""
    if not meta or "protocol" not in meta or "input_size" not in meta:
        raise DataError.at(Path(path).with_suffix(".json"), None, "missing or incomplete (needs protocol and "
                           "input_size): rerun sltnet/localizer/test.py, which writes it next to boxes.csv")
    size = int(meta["input_size"])
    protocol = get_protocol(meta["protocol"], size, int(meta.get("resize_size") or size))
    return protocol.to_image_fraction(box)


class ThresholdSweep:
    """GT-known Loc of localization maps boxed by ``rule`` (:func:`maps_to_boxes`) at every threshold
    of ``thresholds``: one ``utils.evaluation.metrics.LocalizationMeter`` per threshold, so each value is scored
    exactly as the reported GT-known Loc is. Streams: :meth:`update` per batch, :meth:`merge` the
    other ranks' :meth:`state`, then :meth:`best`.

    Every threshold boxes every map once (a connected-component labelling or a contour search each:
    91 per image for :data:`BEST_THRESHOLDS`).
    """

    def __init__(self, thresholds=BEST_THRESHOLDS, *, rule: str = "zhou", iou_threshold: float = 0.5,
                 iou_compare: str = ">=", inclusive_iou: bool = True):
        self.thresholds = tuple(float(t) for t in thresholds)
        self.rule = rule
        self.meters = [LocalizationMeter(iou_threshold, iou_compare, inclusive_iou) for _ in self.thresholds]

    def update(self, maps, gt_boxes) -> None:
        """``maps`` [B, H, W] at the input size (raw), ``gt_boxes`` a list of B (n_i, 4) arrays."""
        for t, meter in zip(self.thresholds, self.meters):
            meter.update(np.stack([b[0] for b in maps_to_boxes(maps, t, self.rule)]), gt_boxes)

    def state(self) -> list[dict]:
        return [m.state() for m in self.meters]

    def merge(self, state: list[dict]) -> "ThresholdSweep":
        for meter, st in zip(self.meters, state):
            meter.merge(st)
        return self

    def curve(self) -> list[float]:
        """GT-known Loc (percent) at each threshold."""
        return [m.compute()["gt_known_loc"] for m in self.meters]

    def best(self) -> tuple[float, float]:
        """(threshold, its GT-known Loc): the highest GT-known Loc, the lowest threshold on ties."""
        curve = self.curve()
        i = int(np.argmax(curve))
        return self.thresholds[i], curve[i]
