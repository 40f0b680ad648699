"""Evaluation protocols (``resize`` = ``wsol``, ``center_crop`` = ``spol``, ``spol_official`` =
``spol-official``), one small type each, specified in [docs/evaluation.md](../../docs/evaluation.md). Each object owns its
``transform()``, ``geometry``, ``gt_boxes`` / ``gt_mask`` / ``image`` in its frame, its box rule
``box(map, t)``, ``score`` / ``hits`` (IoU convention, counting) and ``meta()``; ``get_protocol`` takes
either name. Importable without torch (the option parsers read :data:`CHOICES`).
"""
from __future__ import annotations

import os
from functools import partial

import numpy as np

from utils.errors import DataError


class Protocol:
    """Base: the geometry of a square ``input_size`` input after an optional resize + centre crop."""

    name: str = ""
    alias: str = ""                 # the command-line name it had before (wsol, spol, spol-official)
    crops: bool = False             # resize to resize_size then centre crop input_size
    pipeline: str = "torchvision"   # default resampling of transform(): torchvision or the SPOL authors'
    inclusive_iou: bool = True      # IoU counts pixel edges inclusively (+1 on width and height)
    skips_images: bool = False      # an image without a box / GT box is left out of the denominator
    iou_compare: str | None = None  # forced IoU comparison (None: the caller's, default '>=')
    needs_threshold: bool = False   # the box threshold is fixed by the caller (no sweep default)
    box_rule: str = ""
    box_convention: str = ""

    def __init__(self, input_size: int = 224, resize_size: int = 256, *, label: str | None = None):
        self.input_size, self.resize_size = int(input_size), int(resize_size)
        self.label = label or self.name  # the name it was asked by (outputs keep the user's spelling)
        if self.crops and self.resize_size < self.input_size:
            raise ValueError(f"{self.name} protocol: resize_size {resize_size} < input_size {input_size}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(input_size={self.input_size}, resize_size={self.resize_size})"

    # ------------------------------------------------------------------ geometry
    @property
    def geometry(self) -> dict:
        """``{"protocol", "resize": (h, w), "crop": int | None, "offset": (x, y), "output_size": (h, w)}``
        (crop offset as torchvision's CenterCrop: ``int(round((resize - input) / 2))``)."""
        n = self.input_size
        if not self.crops:
            return {"protocol": self.name, "resize": (n, n), "crop": None, "offset": (0, 0), "output_size": (n, n)}
        off = int(round((self.resize_size - n) / 2.0))
        return {"protocol": self.name, "resize": (self.resize_size, self.resize_size), "crop": n,
                "offset": (off, off), "output_size": (n, n)}

    def describe(self) -> str:
        """The geometry in words (titles of pictures and tables)."""
        if self.crops:
            return f"resize {self.resize_size}, centre crop {self.input_size}"
        return f"whole image at {self.input_size}"

    def transform(self, pipeline: str | None = None, *, normalize: bool = True):
        """The evaluation transform (a :mod:`utils.data.transforms` object) of this geometry.

        ``pipeline``: "torchvision" (:func:`utils.data.transforms.build_transform`) or "spol" (the SPOL
        authors' order, :class:`utils.data.transforms.SPOLTransform`); None = this protocol's own.
        ``normalize=False`` ("torchvision" only): uint8 images, normalised on the batch by
        ``utils.engine.inference.run_inference`` (:func:`utils.data.transforms.normalize_images`).
        """
        from utils.data.transforms import build_spol_transform, build_transform

        pipeline = pipeline or self.pipeline
        if pipeline not in ("torchvision", "spol"):
            raise ValueError(f"pipeline must be 'torchvision' or 'spol', got {pipeline!r}")
        if pipeline == "spol" and not normalize:
            raise ValueError("the 'spol' pipeline normalises before it resizes: normalize=False is 'torchvision' only")
        build = (partial(build_transform, normalize=normalize) if pipeline == "torchvision"
                 else build_spol_transform)
        if self.crops:
            return build("center", resize=self.resize_size, crop=self.input_size)
        return build("resize", resize=self.input_size)

    def image(self, record) -> np.ndarray:
        """The record's RGB uint8 image at this geometry (cv2 INTER_LINEAR resize, then the crop)."""
        import cv2

        from utils.evaluation.boxes import single_thread_cv2

        geom = self.geometry
        with single_thread_cv2():   # no OpenCV worker pool in a process that forks later
            image = cv2.imread(record.path, cv2.IMREAD_COLOR)
            if image is None:
                raise DataError.at(record.path, msg="image not found or unreadable")
            h, w = geom["resize"]
            image = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), (w, h), interpolation=cv2.INTER_LINEAR)
        return np.ascontiguousarray(self._crop(image))

    def _crop(self, array: np.ndarray) -> np.ndarray:
        if not self.crops:
            return array
        ox, oy = self.geometry["offset"]
        return array[oy:oy + self.input_size, ox:ox + self.input_size]

    def gt_mask(self, record) -> np.ndarray | None:
        """The record's GT mask, grayscale uint8 raw values (0..255; a 16-bit file's high byte),
        nearest-resized to this geometry (input_size x input_size); None when the record has no
        mask. A mask of another size than its image is an error, as in ``utils.data.WSOLDataset``
        (never stretched)."""
        if record.mask_path is None:
            return None
        import cv2

        mask = cv2.imread(record.mask_path, cv2.IMREAD_GRAYSCALE)
        if mask is None:
            kind = "not found" if not os.path.isfile(record.mask_path) else "unreadable or corrupt"
            raise DataError.at(record.mask_path, msg=f"GT mask {kind}")
        w, h = (int(v) for v in record.size)
        if mask.shape[:2] != (h, w):
            raise DataError.at(record.mask_path, msg=f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                                                     f"{w}x{h}")
        rh, rw = self.geometry["resize"]
        mask = cv2.resize(mask, (rw, rh), interpolation=cv2.INTER_NEAREST)
        return np.ascontiguousarray(self._crop(mask))

    def to_image_fraction(self, box) -> list[float]:
        """A box in this geometry's input pixels -> fractions of the original image (its inverse)."""
        box = np.asarray(box, dtype=np.float64)
        geom = self.geometry
        return ((box + geom["offset"][0]) / float(geom["resize"][0])).tolist()

    def to_image_box(self, box, size) -> np.ndarray:
        """A box in this geometry's input pixels -> pixels of the original image of ``size`` =
        ``(width, height)``: its fractions (:meth:`to_image_fraction`) times ``(W, H, W, H)``, clipped to
        ``[0, W] x [0, H]``; float64 ``(4,)``. The all-zero box (no box) stays all zero."""
        w, h = float(size[0]), float(size[1])
        scale = np.array([w, h, w, h])
        if not np.any(np.asarray(box, dtype=np.float64)):
            return np.zeros(4)
        return np.clip(np.asarray(self.to_image_fraction(box), dtype=np.float64) * scale, 0.0, scale)

    def map_to_image(self, scoremap, size) -> np.ndarray:
        """A score map at this geometry's input (``input_size`` square) -> float32 ``(H, W)`` over the
        original image of ``size`` = ``(width, height)``: put back where the input came from in the
        resized image (zero where a crop left the image out), then resized bilinearly to ``W x H``."""
        import cv2

        from utils.evaluation.boxes import single_thread_cv2

        m = np.asarray(scoremap, dtype=np.float32)
        geom = self.geometry
        if self.crops:
            rh, rw = geom["resize"]
            ox, oy = geom["offset"]
            canvas = np.zeros((rh, rw), np.float32)
            canvas[oy:oy + m.shape[0], ox:ox + m.shape[1]] = m
            m = canvas
        w, h = int(size[0]), int(size[1])
        with single_thread_cv2():
            return cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
    def from_image_box(self, box, size) -> np.ndarray:
        """A box a method predicted in pixels of the original image of ``size`` = ``(width, height)``
        -> this geometry's input, exactly as the image's GT boxes get there (:meth:`gt_boxes`), so that
        the IoU compares the two in one frame and one convention: float64 ``(4,)``. A box left without
        area in the input (outside a centre crop) comes back as ``[0, 0, 0, 0]``, no box: a miss."""
        moved = self.gt_boxes(np.asarray(box, np.float64).reshape(1, 4), size)
        return np.asarray(moved[0] if len(moved) else np.zeros(4), np.float64)

    def same_geometry(self, other: "Protocol") -> bool:
        """Whether ``other`` puts every image where this protocol does (same input, same resize and crop)."""
        return self.geometry["resize"] == other.geometry["resize"] and self.geometry["crop"] == other.geometry["crop"]

    def meta(self) -> dict:
        """What a ``boxes.json`` sidecar records about the geometry."""
        return {"protocol": self.label, "input_size": self.input_size,
                "resize_size": self.resize_size if self.crops else None}

    # ------------------------------------------------------------------ to override
    def gt_boxes(self, boxes, size) -> np.ndarray:
        raise NotImplementedError

    def box(self, scoremap, threshold: float) -> np.ndarray:
        raise NotImplementedError

    def score(self, pred_boxes, gt_boxes, flags=None, *, iou_threshold: float = 0.5, iou_compare: str = ">=",
              inclusive_iou: bool | None = None) -> tuple[dict, list | None]:
        """GT-known (and Top-1/5 with ``flags``: per image ``(top1, top5)``) Loc in percent of
        per-image predicted boxes against per-image GT boxes. Returns ``(loc, per_image)``;
        ``per_image`` is None where this protocol keeps no per-image list."""
        raise NotImplementedError


class Resize(Protocol):
    """Choe et al.'s evaluation (wsolevaluation): the whole image resized to input x input."""

    name, alias = "resize", "wsol"
    box_rule = "Choe et al.: uint8 map > int(t * max), largest contour"
    box_convention = "x0,y0,x1,y1 input pixels, x1 = min(x0 + w, W - 1), inclusive IoU"

    def gt_boxes(self, boxes, size) -> np.ndarray:
        """Choe et al.'s ``resize_bbox``: ``int(coord * input_size / w or h)`` per coordinate
        (truncation), float32 ``(N, 4)``."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        w, h = float(size[0]), float(size[1])
        out = np.empty_like(boxes)
        out[:, 0::2] = boxes[:, 0::2] * float(self.input_size) / w
        out[:, 1::2] = boxes[:, 1::2] * float(self.input_size) / h
        return np.trunc(out).astype(np.float32)

    def box(self, scoremap, threshold: float) -> np.ndarray:
        """Choe's box (largest contour) of one map, int64 ``[x0, y0, x1, y1]``; ``[0, 0, 0, 0]``
        when no pixel is above the threshold (their placeholder)."""
        from utils.evaluation.boxes import boxes_from_maps

        return boxes_from_maps(np.asarray(scoremap)[None], threshold)[0][0]

    def to_image_fraction(self, box) -> list[float]:
        return (np.asarray(box, dtype=np.float64) / float(self.input_size)).tolist()

    def _meter(self, iou_threshold, iou_compare, inclusive_iou):
        from utils.evaluation.metrics import LocalizationMeter

        return LocalizationMeter(iou_threshold, iou_compare, self.inclusive_iou if inclusive_iou is None else inclusive_iou)

    def score(self, pred_boxes, gt_boxes, flags=None, *, iou_threshold=0.5, iou_compare=">=", inclusive_iou=None):
        meter = self._meter(iou_threshold, iou_compare, inclusive_iou)
        meter.update([np.asarray(b).reshape(-1, 4) for b in pred_boxes], list(gt_boxes),
                     *(zip(*flags) if flags is not None else (None, None)))
        return meter.compute(), None

    def hits(self, pred_boxes, gt_boxes, *, iou_threshold: float = 0.5, iou_compare: str = ">=",
             inclusive_iou: bool | None = None) -> list[dict]:
        """Per-image outcome of :meth:`score`: ``{"iou", "hit", "skipped": None}``; ``iou`` is None for an
        image without a box (``[0, 0, 0, 0]``) or without a GT box (a miss)."""
        meter = self._meter(iou_threshold, iou_compare, inclusive_iou)
        preds = [np.asarray(b).reshape(-1, 4) for b in pred_boxes]
        gts = list(gt_boxes)
        hits = meter.update(preds, gts)
        ious = meter.best_ious(preds, gts)
        return [{"iou": float(iou) if np.any(p) and len(np.asarray(g).reshape(-1, 4)) else None, "hit": bool(hit),
                 "skipped": None} for p, g, iou, hit in zip(preds, gts, ious, hits)]


class CenterCrop(Protocol):
    """SPOL's test geometry (resize, centre crop) with the authors' box rule and IoU, every image
    counted (this repository's fixes of their loop; :class:`SpolOfficial` is theirs exactly)."""

    name, alias = "center_crop", "spol"
    crops = True
    pipeline = "spol"
    inclusive_iou = False
    needs_threshold = True
    box_rule = "float32 map > t, RETR_TREE, largest contour (SPOL authors')"
    box_convention = ("x0,y0,x1,y1 input pixels, x1 = x0 + w (exclusive), the authors' IoU; "
                      "0,0,0,0 = no contour")
    eps = 0.0  # IoU = inter / (union + eps)

    def gt_boxes(self, boxes, size) -> np.ndarray:
        """Ground-truth boxes as the SPOL authors' seg test computes them, float64 ``(M, 4)``,
        ``x0, y0, x1, y1`` in the ``input_size`` crop.

        Each box is first clipped to the image (``[0, W - 1] x [0, H - 1]``, their ImageNet form, the
        same as their CUB form for any box that starts inside the image), then goes through
        albumentations' pascal_voc bbox path of ``Resize(resize) -> CenterCrop(input)``: normalised by
        (W, H), scaled to the resized image, shifted by the crop offset ``(resize - input) // 2``,
        normalised by the crop, clipped to [0, 1] and scaled back, i.e. clipped to ``[0, input]``
        (not ``input - 1``). A box with no area left is dropped (so an image can have none) - the same
        operations in the same order, so the floats are theirs. A box with ``x1 <= x0`` after the first
        clip, on which their script stops with an error, is dropped too.
        """
        input_size, resize_size = self.input_size, self.resize_size
        w, h = int(size[0]), int(size[1])
        off = (resize_size - input_size) // 2
        out = []
        for box in np.asarray(boxes, np.float64).reshape(-1, 4):
            xmin, ymin, xmax, ymax = (float(v) for v in box)
            xmin, ymin = min(max(xmin, 0), w - 1), min(max(ymin, 0), h - 1)
            xmax, ymax = max(min(xmax, w - 1), 0), max(min(ymax, h - 1), 0)
            if xmax <= xmin or ymax <= ymin:
                continue
            # pascal_voc -> albumentations (normalised by the original size)
            nb = (xmin / w, ymin / h, xmax / w, ymax / h)
            # CenterCrop on the resized image: denormalise, shift, normalise by the crop
            x0, y0, x1, y1 = (nb[0] * resize_size, nb[1] * resize_size, nb[2] * resize_size, nb[3] * resize_size)
            nb = ((x0 - off) / input_size, (y0 - off) / input_size, (x1 - off) / input_size, (y1 - off) / input_size)
            # filter_bboxes: area before and after clipping to [0, 1]
            area = (nb[2] * input_size - nb[0] * input_size) * (nb[3] * input_size - nb[1] * input_size)
            nb = tuple(np.clip(nb, 0, 1.0))
            clipped = (nb[2] * input_size - nb[0] * input_size) * (nb[3] * input_size - nb[1] * input_size)
            if not area or clipped / area <= 0.0 or clipped <= 0.0:
                continue
            out.append([nb[0] * input_size, nb[1] * input_size, nb[2] * input_size, nb[3] * input_size])
        return np.asarray(out, np.float64).reshape(-1, 4)

    def box(self, scoremap, threshold: float) -> np.ndarray:
        """The SPOL authors' box (:func:`utils.evaluation.boxes.spol_box`), int64 ``[x, y, x + w, y + h]``;
        ``[0, 0, 0, 0]`` when the map has no contour (:meth:`score` counts such an image as a miss,
        or skips it in :class:`SpolOfficial`; it never reaches the IoU)."""
        from utils.evaluation.boxes import spol_box

        box = spol_box(scoremap, threshold)
        return np.asarray(box if box is not None else [0, 0, 0, 0], np.int64)

    def hits(self, pred_boxes, gt_boxes, *, iou_threshold: float = 0.5, iou_compare: str = ">=") -> list[dict]:
        """Per-image outcome of the SPOL authors' accuracy loop.

        ``pred_boxes``: per image a box ``[x0, y0, x1, y1]``, None or ``[0, 0, 0, 0]`` (no contour);
        ``gt_boxes``: per image an ``(M, 4)`` array (:meth:`gt_boxes`). IoU is
        :func:`utils.evaluation.metrics.spol_iou` with this protocol's ``eps``, the max over the image's GT boxes.
        Returns a list of dicts ``{"iou", "hit", "skipped"}``: with ``skips_images`` an image with no
        GT box left or no contour is SKIPPED (``skipped`` names why; their script leaves it out of
        every count), otherwise it is a miss.
        """
        from utils.evaluation.metrics import spol_iou

        iou_compare = self.iou_compare or iou_compare
        if iou_compare not in (">=", ">"):
            raise ValueError(f"iou_compare must be '>=' or '>', got {iou_compare!r}")
        out = []
        for pred, gts in zip(pred_boxes, gt_boxes):
            gts = np.asarray(gts, np.float64).reshape(-1, 4)
            no_box = pred is None or not np.any(np.asarray(pred))
            skipped = "no GT box in the crop" if len(gts) == 0 else ("no contour" if no_box else None)
            if skipped is not None:
                out.append({"iou": None, "hit": False, "skipped": skipped if self.skips_images else None})
                continue
            iou = max(spol_iou(pred, gt, eps=self.eps) for gt in gts)
            hit = iou > iou_threshold if iou_compare == ">" else iou >= iou_threshold
            out.append({"iou": float(iou), "hit": bool(hit), "skipped": None})
        return out

    def score(self, pred_boxes, gt_boxes, flags=None, *, iou_threshold=0.5, iou_compare=">=", inclusive_iou=None):
        outcomes = self.hits(pred_boxes, gt_boxes, iou_threshold=iou_threshold, iou_compare=iou_compare)
        return spol_accuracy(outcomes, flags), outcomes


class SpolOfficial(CenterCrop):
    """The SPOL authors' seg-test accuracy exactly: skipped images, ``> 0.5``, ``union + 1e-12``."""

    name, alias = "spol_official", "spol-official"
    skips_images = True
    iou_compare = ">"
    eps = 1e-12


def spol_accuracy(outcomes, flags=None) -> dict:
    """GT-known / Top-1 / Top-5 Loc (percent) of :meth:`CenterCrop.hits` outcomes over the images NOT
    skipped, as the authors' ``cnt_loc / cnt`` (``flags``: per image ``(top1, top5)`` or None)."""
    kept = [i for i, o in enumerate(outcomes) if o["skipped"] is None]
    n = len(kept)
    pct = (lambda h: 100.0 * h / n) if n else (lambda h: float("nan"))
    res = {"gt_known_loc": pct(sum(outcomes[i]["hit"] for i in kept)), "num_counted": n,
           "num_skipped": len(outcomes) - n}
    if flags is not None:
        res["top1_loc"] = pct(sum(outcomes[i]["hit"] and bool(flags[i][0]) for i in kept))
        res["top5_loc"] = pct(sum(outcomes[i]["hit"] and bool(flags[i][1]) for i in kept))
    return res


PROTOCOLS = {cls.name: cls for cls in (Resize, CenterCrop, SpolOfficial)}
ALIASES = {cls.alias: name for name, cls in PROTOCOLS.items()}
# what --protocol accepts: the command-line names first (the documented ones), then the neutral names
CHOICES = tuple(ALIASES) + tuple(PROTOCOLS)
BOTH = "both"  # spol/seg/test.py: the two geometries in one run


def choices(*names: str) -> list[str]:
    """``--protocol`` choices: both spellings of the named protocols (every protocol when none named)."""
    kept = [PROTOCOLS[n] for n in (names or PROTOCOLS)]
    return [c.alias for c in kept] + [c.name for c in kept]


def canonical(name: str) -> str:
    """The neutral name of ``name`` (either spelling)."""
    if name in PROTOCOLS:
        return name
    if name in ALIASES:
        return ALIASES[name]
    raise ValueError(f"protocol must be one of {', '.join(CHOICES)}, got {name!r}")


def get_protocol(name, input_size: int = 224, resize_size: int = 256) -> Protocol:
    """The protocol object of ``name`` (neutral name or command-line alias); a Protocol is returned as is."""
    if isinstance(name, Protocol):
        return name
    return PROTOCOLS[canonical(name)](input_size, resize_size, label=name)


def expand(value: str) -> list[str]:
    """The protocols a ``--protocol`` value asks for, spelled as given (``both`` = spol and wsol)."""
    if value == BOTH:
        return [CenterCrop.alias, Resize.alias]
    canonical(value)
    return [value]
