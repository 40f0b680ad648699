"""Box conventions of SLT-Net's regressor and pseudo boxes from localization maps.

* Pixel boxes are ``x0, y0, x1, y1`` in input-pixel coordinates of the image the network saw
  (``utils.evaluation.boxes.boxes_from_maps`` convention: ``x1 = min(x0 + w, W - 1)``, scored with the inclusive
  IoU of Choe et al.).
* The regressor predicts ``p = (x1/m, y1/m, x2/m, y2/m)``; Sec. 3.1: "(x1, y1) are the top-left
  coordinate of the bounding box, (x2, y2) are the bottom-right coordinate of the bounding box,
  and m is the downsampling factor". By default (``box_scale="stride"``) ``m`` is the localizer's
  downsampling factor (its CAM stride: 16 for VGG16 conv5, so a 224 input's 14 x 14 map gives
  coordinates on that grid, 0 .. 14); ``box_scale="input"`` divides by the input size instead
  (every coordinate in [0, 1]). :func:`box_divisor` gives the divisor, :func:`normalize_boxes` /
  :func:`denormalize_boxes` divide and multiply by it (exact inverses up to rounding).
* Pseudo boxes (:func:`pseudo_boxes`): ``rule="zhou"`` (default) is CAM's rule, which the paper
  cites (Sec. 3.2: "segments the regions with the top 20% values and chose the bounding box that
  covers the largest connected component"): the raw map, values above 20 % of its max
  (``utils.evaluation.boxes.boxes_from_maps_zhou``); ``rule="choe"`` min-max normalises first and applies Choe
  et al.'s uint8 rule (``utils.evaluation.boxes.boxes_from_maps``), the rule of the evaluator's ``wsol`` protocol.
* ``boxes.csv`` (hand-off file, read and written by ``utils.evaluation.handoff``): header
  ``image_id,x0,y0,x1,y1`` in input pixels of the protocol geometry; a sidecar ``boxes.json`` says
  which protocol / input size / threshold / box rule / downsampling factor produced them;
  :func:`boxes_to_image_fraction` reads a box back as fractions of the original image.
* A trained regressor's encoding (box scale, m) is read from its run's ``args.yaml``
  (:func:`trained_box_encoding`).
* :class:`ThresholdSweep`: GT-known Loc of maps boxed by one rule at every threshold of a grid
  (:data:`BEST_THRESHOLDS`, 0.05 .. 0.95 step 0.01), for ``localizer/test.py --box-threshold best``.
"""
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
    """What the regressor's box is divided by: ``stride`` (= m, the localizer's downsampling factor,
    Sec. 3.1) for ``box_scale="stride"``, the input size (int or (width, height)) for ``"input"``."""
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
    Sec. 3.2: values above ``threshold`` of the raw map's max, largest connected component) or
    ``"choe"`` (min-max normalised, then Choe et al.'s uint8 rule). An empty map gives [0, 0, 0, 0].
    """
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)  # (H, W)
    resized = resize_maps(maps.detach().float(), size).cpu()
    return np.stack([b[0] for b in maps_to_boxes(resized, threshold, rule)]).astype(np.int64)


def trained_box_encoding(args, weights_path) -> tuple[str, float | None]:
    """(box scale, m) the regressor in ``weights_path`` was trained with: its folder's args.yaml.

    An explicit ``--box-scale`` / ``--box-stride`` must agree with it (else one error line). An
    args.yaml without ``box_scale`` comes from a run before the scale was an option: such
    regressors were trained on boxes divided by the input size. Without args.yaml the scale (and,
    for ``stride``, m) must be given on the command line.
    """
    import yaml

    path = Path(weights_path).parent / "args.yaml"
    if path.is_file():
        trained = yaml.safe_load(path.read_text()) or {}
        scale = trained.get("box_scale") or "input"
        stride = trained.get("box_stride") if scale == "stride" else None
        if args.box_scale is not None and args.box_scale != scale:
            raise DataError.at(path, None, f"the regressor was trained with box_scale {scale}, this test asks "
                               f"for --box-scale {args.box_scale}: drop the option (or pass --box-scale {scale})")
        if scale == "stride" and args.box_stride is not None and stride is not None \
                and float(args.box_stride) != float(stride):
            raise DataError.at(path, None, f"the regressor was trained with box_stride {stride}, this test asks "
                               f"for --box-stride {args.box_stride}")
        stride = stride if stride is not None else args.box_stride
    else:
        scale, stride = args.box_scale, args.box_stride
        if scale is None:
            raise DataError.at(path, None, "not found, so the regressor's box scale is unknown: pass --box-scale "
                               "stride --box-stride M (as trained) or --box-scale input")
    if scale == "stride" and stride is None:
        raise DataError.at(path, None, "box_scale stride without box_stride: pass --box-stride M (as trained)")
    return scale, (float(stride) if stride is not None else None)


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
