"""Pseudo masks for the seg stage, made from the CAM model's maps (cam stage, test step).

The computation is the authors' (``cub200-cam/test.py`` / ``imagenet-cam/test.py`` of weijun88/SPOL),
operation for operation, so that the same CAM gives the same PNG bytes (checked against fixtures
made by running their code: ``tests/fixtures/spol/``). Per training image:

1. The image is resized to ``work_size x work_size`` (256, no crop; :class:`utils.data.transforms.SPOLTransform`)
   and goes through the CAM model; the map of the ground-truth class, as float32 numpy, is divided
   by ``max + 1e-6`` and resized to 256 x 256 with ``cv2.resize`` INTER_LINEAR
   (:func:`normalize_cam`).
2. Foreground channel: that normalised CAM ``x 255``.
3. Gaussian channel (:func:`gaussian_prior`): CAM values outside ``[0.1, 0.5]`` are set to 0; the
   contours of the rest are found with ``cv2.RETR_TREE`` (a hole's contour is a contour too); every
   contour with ``cv2.contourArea >= 20`` is filled on its own; its pixels weighted by the kept CAM
   values (normalised to sum 1, sums over the full grid) give the weighted mean ``(ux, uy)``,
   variances ``sx, sy`` and covariance ``sxy``; these three are divided by 10 and the bivariate
   Gaussian ``exp(c * (dx - 2 dxy + dy))`` is drawn with ``dx = (x-ux)^2/sx``, ``dy = (y-uy)^2/sy``,
   ``dxy = (x-ux)(y-uy) sxy/sx/sy``, ``c = -1/(2 (1 - sxy^2/sx/sy))``. The channel is the pixel-wise
   max over contours, ``x 255``.
4. ``(fore, gauss, 0)`` stacked (float64), ``cv2.resize`` INTER_LINEAR back to the original image
   size, ``np.uint8`` (truncation, not rounding) and written with ``cv2.imwrite``, i.e. in the
   authors' channel layout: **B = foreground CAM, G = Gaussian prior, R = 0** in the file
   (:func:`pseudo_mask_image` returns that B, G, R array).

Two deliberate differences, each one switch away from the authors' behaviour:

* degenerate contour (zero variance or |correlation| = 1): the authors' Gaussian is NaN and the NaN
  spreads over the whole channel; here such a contour is skipped (``degenerate="skip"``, default);
  ``degenerate="nan"`` (``spol/cam/test.py --degenerate-contours nan``) computes it as they do.
* no contour of 20 px: their script crashes (``np.stack`` of an array and the scalar 0); here the
  Gaussian channel is 0.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

WORK_SIZE = 256
BAND_LOW, BAND_HIGH = 0.1, 0.5
MIN_CONTOUR_AREA = 20
VARIANCE_DIVISOR = 10.0


def _grid(shape) -> tuple[np.ndarray, np.ndarray]:
    """``X, Y = np.meshgrid(np.arange(w), np.arange(h))`` (int64, as the authors build them)."""
    return np.meshgrid(np.arange(shape[1]), np.arange(shape[0]))


def normalize_cam(cam, size: int = WORK_SIZE) -> np.ndarray:
    """The authors' step 1 for ONE raw CAM ``[h, w]``: float32 numpy ``cam / (cam.max() + 1e-6)``,
    then ``cv2.resize(..., (size, size), INTER_LINEAR)``. Returns float32 ``[size, size]``."""
    cam = np.asarray(cam, dtype=np.float32)
    cam = cam / (cam.max() + 1e-6)
    return cv2.resize(cam, (size, size), interpolation=cv2.INTER_LINEAR)


def normalize_and_resize(cams: torch.Tensor, size: int = WORK_SIZE) -> torch.Tensor:
    """``[B, h, w]`` CAMs -> :func:`normalize_cam` of each, ``[B, size, size]`` float32 (CPU)."""
    maps = cams.detach().float().cpu().numpy()
    return torch.from_numpy(np.stack([normalize_cam(m, size) for m in maps]) if len(maps)
                            else np.zeros((0, size, size), np.float32))


def reference_gaussian(x, y, ux, uy, sx, sy, sxy) -> np.ndarray:
    """The authors' bivariate Gaussian (``utils/tools.py: gaussian``), same operations, same order."""
    c = -1 / (2 * (1 - sxy ** 2 / sx / sy))
    dx = (x - ux) ** 2 / sx
    dy = (y - uy) ** 2 / sy
    dxy = (x - ux) * (y - uy) * sxy / sx / sy
    return np.exp(c * (dx - 2 * dxy + dy))


def gaussian_from_weights(weights: np.ndarray, grid=None, *, variance_divisor: float = VARIANCE_DIVISOR,
                          degenerate: str = "skip"):
    """The authors' Gaussian for one weight map ``[H, W]`` (non-negative, normalised here to sum 1;
    sums run over the full grid as theirs do). ``degenerate="skip"``: ``None`` when the result would
    not be finite (zero total weight, zero variance, |correlation| = 1); ``"nan"``: returned as is."""
    if degenerate not in ("skip", "nan"):
        raise ValueError(f"degenerate must be 'skip' or 'nan', got {degenerate!r}")
    weight = np.asarray(weights, dtype=np.float64)
    X, Y = _grid(weight.shape) if grid is None else grid
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        weight = weight / weight.sum()
        ux, uy = (weight * X).sum(), (weight * Y).sum()
        sx, sy = (weight * (X - ux) ** 2).sum(), (weight * (Y - uy) ** 2).sum()
        sxy = (weight * (X - ux) * (Y - uy)).sum()
        gauss = reference_gaussian(X, Y, ux, uy, sx / variance_divisor, sy / variance_divisor,
                                   sxy / variance_divisor)
    if degenerate == "skip" and not np.isfinite(gauss).all():
        return None
    return gauss


def gaussian_prior(cam: np.ndarray, *, low: float = BAND_LOW, high: float = BAND_HIGH,
                   min_area: float = MIN_CONTOUR_AREA, variance_divisor: float = VARIANCE_DIVISOR,
                   degenerate: str = "skip") -> np.ndarray:
    """Gaussian channel ``[H, W]`` float64 in [0, 1] of a max-normalised CAM ``[H, W]`` (module
    docstring, step 3); all zeros when no contour qualifies."""
    pred = np.asarray(cam)
    weights = pred.copy()
    weights[np.where(pred < low)] = 0
    weights[np.where(pred > high)] = 0
    contours = cv2.findContours(np.uint8(weights > 0) * 255, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    grid = _grid(pred.shape)
    prior = np.zeros(pred.shape, np.float64)
    for i in range(len(contours)):
        if cv2.contourArea(contours[i]) < min_area:
            continue
        filled = np.zeros(pred.shape, np.uint8)
        cv2.drawContours(filled, contours, i, 1, thickness=-1)
        gauss = gaussian_from_weights(filled * weights, grid, variance_divisor=variance_divisor,
                                      degenerate=degenerate)
        if gauss is not None:
            prior = np.maximum(prior, gauss)
    return prior


def pseudo_mask_image(cam: np.ndarray, size: tuple[int, int], *, degenerate: str = "skip", **prior) -> np.ndarray:
    """Max-normalised ``[S, S]`` float32 CAM (step 1) -> uint8 ``[H, W, 3]`` pseudo mask at ``size`` =
    (width, height) of the original image, in the authors' B, G, R order: channel 0 = CAM,
    1 = Gaussian prior, 2 = 0 (write it with ``cv2.imwrite`` as is, or give ``[..., ::-1]`` to an
    RGB writer). ``prior``: :func:`gaussian_prior`'s ``low``, ``high``, ``min_area``."""
    fore = np.asarray(cam, dtype=np.float32) * 255
    with np.errstate(invalid="ignore"):
        gaus = gaussian_prior(cam, degenerate=degenerate, **prior) * 255
        fuse = np.stack((fore, gaus, np.zeros_like(fore)), axis=-1)
        fuse = cv2.resize(fuse, (int(size[0]), int(size[1])), interpolation=cv2.INTER_LINEAR)
        return np.uint8(fuse)


def pseudo_mask_from_cam(raw_cam, size: tuple[int, int], work_size: int = WORK_SIZE, **kwargs) -> np.ndarray:
    """Single-image convenience: raw non-negative CAM ``[h, w]`` -> uint8 ``[H, W, 3]`` pseudo mask
    (B, G, R order, see :func:`pseudo_mask_image`)."""
    return pseudo_mask_image(normalize_cam(raw_cam, work_size), size, **kwargs)
