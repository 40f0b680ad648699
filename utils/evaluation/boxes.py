"""Score maps to boxes: min-max / max normalisation and resizing of CAMs, Choe et al.'s box rule
(:func:`boxes_from_maps`), the SPOL authors' (:func:`spol_box`) and CAM's (:func:`boxes_from_maps_zhou`),
boxes of cv2 contours. A box is ``x0, y0, x1, y1`` in map pixels; a map with no foreground gives
``[0, 0, 0, 0]``. The rules, exactly: [docs/evaluation.md](../../docs/evaluation.md).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

EMPTY_BOX = np.zeros((1, 4), dtype=np.int64)


# ----------------------------------------------------------------------------- CAMs
def normalize_minmax(maps):
    """Per-map ``(x - min) / (max - min)`` over the last two dimensions.

    Accepts a torch tensor or a numpy array of shape (H, W) or (..., H, W) and returns the same
    type and shape. A constant map becomes all zeros; a map containing NaN or inf becomes all
    zeros (never NaN).
    """
    if isinstance(maps, torch.Tensor):
        x = maps.float() if not maps.is_floating_point() else maps
        flat = x.flatten(-2)
        finite = torch.isfinite(flat).all(dim=-1, keepdim=True)
        safe = torch.where(torch.isfinite(flat), flat, torch.zeros_like(flat))
        lo = safe.amin(dim=-1, keepdim=True)
        hi = safe.amax(dim=-1, keepdim=True)
        rng = hi - lo
        ok = finite & (rng > 0)
        out = torch.where(ok, (safe - lo) / torch.where(ok, rng, torch.ones_like(rng)), torch.zeros_like(safe))
        return out.clamp_(0, 1).reshape(x.shape)
    x = np.asarray(maps)
    x = x.astype(np.float32) if not np.issubdtype(x.dtype, np.floating) else x
    flat = x.reshape(*x.shape[:-2], -1)
    finite = np.isfinite(flat).all(axis=-1, keepdims=True)
    safe = np.where(np.isfinite(flat), flat, 0)
    lo = safe.min(axis=-1, keepdims=True)
    hi = safe.max(axis=-1, keepdims=True)
    rng = hi - lo
    ok = finite & (rng > 0)
    out = np.where(ok, (safe - lo) / np.where(ok, rng, 1), 0)
    return np.clip(out, 0, 1).astype(x.dtype).reshape(x.shape)


def normalize_max(maps, eps: float = 1e-6):
    """Per-map ``x / (max + eps)`` over the last two dimensions (SPOL's pseudo-mask normalisation).

    Non-finite values are replaced by 0 first. Torch tensor or numpy array in, same type out.
    """
    if isinstance(maps, torch.Tensor):
        x = maps.float() if not maps.is_floating_point() else maps
        x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        hi = x.flatten(-2).amax(dim=-1)[..., None, None]
        return x / (hi + eps)
    x = np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    hi = x.reshape(*x.shape[:-2], -1).max(axis=-1)[..., None, None]
    return x / (hi + eps)


def resize_maps(maps: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize (align_corners=False) of [B, h, w] maps to ``size`` (int or (H, W))."""
    if isinstance(size, int):
        size = (size, size)
    out = F.interpolate(maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)
    return out[:, 0]


# ----------------------------------------------------------------------------- boxes
def quantize_scoremap(scoremap: np.ndarray) -> np.ndarray:
    """Choe et al.'s quantisation ``(scoremap * 255).astype(uint8)``.

    Their evaluator receives maps as float64 (``t2n``), so the product is taken in float64.
    """
    return (np.asarray(scoremap, dtype=np.float64) * 255).astype(np.uint8)


def choe_threshold_levels(max_uint8: int, thresholds: Sequence[float]) -> np.ndarray:
    """``int(t * max(uint8 map))`` for every threshold ``t`` (vectorised, identical values)."""
    return (np.asarray(thresholds, dtype=np.float64) * float(max_uint8)).astype(np.int64)


def boxes_from_binary(binary: np.ndarray, *, multi_contour: bool = False, external: bool = False) -> np.ndarray:
    """Boxes of the contours of a binary uint8 map (non-zero = foreground).

    ``external=False`` uses RETR_TREE (Choe et al.; hole contours are contours too),
    ``external=True`` RETR_EXTERNAL (SPOL). Without ``multi_contour`` only the contour of largest
    ``cv2.contourArea`` is kept (first one on ties). Returns int64 (n, 4) boxes
    ``x0, y0, min(x0+w, W-1), min(y0+h, H-1)``; ``[[0, 0, 0, 0]]`` when there is no contour.
    """
    height, width = binary.shape[:2]
    mode = cv2.RETR_EXTERNAL if external else cv2.RETR_TREE
    contours = cv2.findContours(binary, mode, cv2.CHAIN_APPROX_SIMPLE)[0]
    return boxes_from_contours(contours, width, height, multi_contour)


def boxes_from_contours(contours, width: int, height: int, multi_contour: bool = False) -> np.ndarray:
    """Boxes (n, 4) of cv2 contours in a W x H map; see :func:`boxes_from_binary`.

    With many contours (noisy maps) the areas and bounding rectangles are computed in one
    vectorised pass: for integer points ``cv2.contourArea`` is the shoelace formula (exact in
    integers) and ``cv2.boundingRect`` is (min, min, max - min + 1, max - min + 1), so the boxes
    and the choice of the largest contour (first on ties) are identical to the per-contour loop.
    """
    n = len(contours)
    if n == 0:
        return EMPTY_BOX.copy()
    if n == 1:  # the common case on smooth maps: no area to compare
        x, y, w, h = cv2.boundingRect(contours[0])
        return np.array([[x, y, min(x + w, width - 1), min(y + h, height - 1)]], dtype=np.int64)
    if n <= 4:
        if not multi_contour:
            contours = [max(contours, key=cv2.contourArea)]
        boxes = np.empty((len(contours), 4), dtype=np.int64)
        for i, contour in enumerate(contours):
            x, y, w, h = cv2.boundingRect(contour)
            boxes[i] = (x, y, min(x + w, width - 1), min(y + h, height - 1))
        return boxes
    lengths = np.fromiter((len(c) for c in contours), dtype=np.int64, count=n)
    points = np.concatenate(contours, axis=0).reshape(-1, 2).astype(np.int64)
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    xs, ys = points[:, 0], points[:, 1]
    if not multi_contour:
        nxt = np.arange(1, len(points) + 1)
        nxt[starts + lengths - 1] = starts  # each polygon closes on its first point
        twice_area = np.abs(np.add.reduceat(xs * ys[nxt] - ys * xs[nxt], starts))
        k = int(np.argmax(twice_area))
        sl = slice(starts[k], starts[k] + lengths[k])
        xs, ys, starts = xs[sl], ys[sl], np.zeros(1, dtype=np.int64)
    x0 = np.minimum.reduceat(xs, starts)
    y0 = np.minimum.reduceat(ys, starts)
    x1 = np.minimum(np.maximum.reduceat(xs, starts) + 1, width - 1)
    y1 = np.minimum(np.maximum.reduceat(ys, starts) + 1, height - 1)
    return np.stack([x0, y0, x1, y1], axis=1)


def boxes_from_maps(maps: np.ndarray, threshold: float, *, relative_to_max: bool = True,
                    multi_contour: bool = False, quantize_uint8: bool = True) -> list[np.ndarray]:
    """Boxes of each score map of a batch at one threshold.

    Args:
        maps: [B, H, W] (or one [H, W]) score maps with values in [0, 1] (numpy or torch).
        threshold: ``t`` in [0, 1].
        relative_to_max, quantize_uint8: both True = Choe et al.'s rule
            (``uint8 map > int(t * max(uint8 map))``, RETR_TREE); both False = SPOL's rule
            (``map > t``, RETR_EXTERNAL). Mixed settings combine the two steps as named
            (``uint8 map > int(t * 255)`` or ``map > t * max``) and use RETR_EXTERNAL.
        multi_contour: keep the boxes of all contours instead of the largest one.
    Returns:
        a list of B int64 arrays (n_i, 4), ``x0, y0, x1, y1`` (see module docstring);
        ``[[0, 0, 0, 0]]`` for a map without any foreground pixel.
    """
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().cpu().numpy()
    maps = np.asarray(maps)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise ValueError(f"boxes_from_maps expects [B, H, W] maps, got shape {maps.shape}")
    external = not (relative_to_max and quantize_uint8)
    out = []
    for scoremap in maps:
        if quantize_uint8:
            image = quantize_scoremap(scoremap)
            if relative_to_max:
                level = int(threshold * np.max(image))
            else:
                level = int(threshold * 255)
            binary = (image > level).astype(np.uint8) * 255
        else:
            x = np.asarray(scoremap, dtype=np.float64)
            thr = threshold * np.max(x) if relative_to_max else threshold
            binary = (x > thr).astype(np.uint8) * 255
        out.append(boxes_from_binary(binary, multi_contour=multi_contour, external=external))
    return out



@contextmanager
def single_thread_cv2():
    """Run OpenCV calls with one thread, restoring the count after: a parallel cv2 call (a connected
    components labelling, an upsampling resize) starts OpenCV's worker pool, and a process forked
    after that (utils.evaluation.evaluate's pool, DataLoader workers) hangs in its first cv2.setNumThreads."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def boxes_from_maps_zhou(maps, threshold: float = 0.2) -> list[np.ndarray]:
    """Boxes of raw (signed, unnormalised) maps by the CAM paper's rule (Zhou et al., CVPR 2016).

    Zhou et al.'s text: segment the regions whose value is above ``threshold`` (20 %) of the map's
    max value, then take the box that covers the largest connected component. Here: binary map =
    ``map > threshold * max(map)`` on the map's own values (no min-max normalisation, no uint8
    quantisation); components are 8-connected (``cv2.connectedComponentsWithStats``); the largest
    by pixel count wins (lowest label on ties). Box convention as :func:`boxes_from_maps`
    (``x1 = min(x0 + w, W - 1)``). A map whose max is not positive has no region above 20 % of it
    and gives ``[[0, 0, 0, 0]]``; non-finite values count as 0.

    This differs from Choe et al.'s rule (:func:`boxes_from_maps` after :func:`normalize_minmax`)
    whenever the map has negative values: min-max then ``> t`` keeps ``map > min + t (max - min)``,
    a lower level than ``t * max``. Zhou et al.'s released box generator (a multi-threshold program
    on heatmap images) is not what their paper's sentence describes; this follows the sentence,
    which is the rule SLT-Net's paper cites (Sec. 3.2).

    Args:
        maps: [B, H, W] (or one [H, W]) maps, numpy or torch.
        threshold: fraction of each map's max.
    Returns:
        a list of B int64 arrays of shape (1, 4).
    """
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().float().cpu().numpy()
    maps = np.asarray(maps)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise ValueError(f"boxes_from_maps_zhou expects [B, H, W] maps, got shape {maps.shape}")
    with single_thread_cv2():   # serial labelling: see single_thread_cv2
        return [_zhou_box(scoremap, threshold) for scoremap in maps]


def _zhou_box(scoremap, threshold: float) -> np.ndarray:
    """One map's box by :func:`boxes_from_maps_zhou`'s rule, (1, 4) int64."""
    x = np.nan_to_num(np.asarray(scoremap, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    height, width = x.shape
    top = float(x.max()) if x.size else 0.0
    if top <= 0:
        return EMPTY_BOX.copy()
    binary = (x > threshold * top).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count < 2:
        return EMPTY_BOX.copy()
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x0, y0 = int(stats[k, cv2.CC_STAT_LEFT]), int(stats[k, cv2.CC_STAT_TOP])
    w, h = int(stats[k, cv2.CC_STAT_WIDTH]), int(stats[k, cv2.CC_STAT_HEIGHT])
    return np.array([[x0, y0, min(x0 + w, width - 1), min(y0 + h, height - 1)]], dtype=np.int64)


def spol_box(scoremap, threshold: float):
    """The SPOL authors' box of one score map (their seg test): ``np.uint8(map > t) * 255`` compared
    in float32 as their float32 map is, contours with ``cv2.RETR_TREE``, the first contour of largest
    ``cv2.contourArea``, box ``[x, y, x + w, y + h]`` of its ``cv2.boundingRect`` (exclusive corner,
    not clipped). Returns a list of 4 ints, or None when the map has no contour (their script skips
    such an image)."""
    pred = np.asarray(scoremap, dtype=np.float32)
    mask = np.uint8(pred > np.float32(threshold)) * 255
    contours = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if len(contours) == 0:
        return None
    contour = max(contours, key=cv2.contourArea)
    x, y, w, h = cv2.boundingRect(contour)
    return [x, y, x + w, y + h]
