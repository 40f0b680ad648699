"""Pseudo masks for the seg stage, made from the CAM model's maps (cam stage, test step).

Recipe (the reference's, per training image):

1. The image is resized to ``work_size x work_size`` (256, no crop) and goes through the CAM model;
   the map of the ground-truth class is divided by its max (+1e-6) and resized bilinearly to
   ``work_size x work_size`` (:func:`normalize_and_resize`, batched on the model's device).
2. Foreground channel: that normalised CAM.
3. Gaussian channel (:func:`gaussian_prior`): CAM values in ``[low, high] = [0.1, 0.5]`` are kept, the
   others set to 0; every external contour of that region with ``cv2.contourArea >= 20`` px is filled;
   its pixels are weighted by the kept CAM values (normalised to sum 1) which give the weighted mean
   ``(ux, uy)``, variances ``sx, sy`` and covariance ``sxy``; these three are divided by 10 and the
   bivariate Gaussian ``exp(c * (dx - 2 dxy + dy))`` is drawn with ``dx = (x-ux)^2/sx``,
   ``dy = (y-uy)^2/sy``, ``dxy = (x-ux)(y-uy) sxy/(sx sy)``, ``c = -1/(2 (1 - sxy^2/(sx sy)))``.
   The channel is the pixel-wise max over contours (0 when there is none).
4. Both channels x255, resized back to the original image size, saved as a lossless PNG:
   **R = foreground CAM, G = Gaussian prior, B = 0** (:func:`pseudo_mask_image`).

Degenerate contours: the reference produces NaN when a contour's weighted variance is zero or its
correlation is +-1. Here such a contour is SKIPPED (it contributes nothing to the Gaussian channel):
``sx <= eps``, ``sy <= eps`` or ``1 - sxy^2/(sx sy) <= eps`` with ``eps = 1e-6``. All other contours give
exactly the reference's Gaussian. Everything is vectorised numpy (no per-pixel Python loop).
"""
from __future__ import annotations

import functools

import cv2
import numpy as np
import torch
import torch.nn.functional as F

WORK_SIZE = 256
BAND_LOW, BAND_HIGH = 0.1, 0.5
MIN_CONTOUR_AREA = 20
VARIANCE_DIVISOR = 10.0
DEGENERATE_EPS = 1e-6


@functools.lru_cache(maxsize=4)
def _grid(shape) -> np.ndarray:
    """Read-only (y, x) pixel coordinates of a map of ``shape`` (shared by every call)."""
    grid = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    grid.flags.writeable = False
    return grid


def normalize_and_resize(cams: torch.Tensor, size: int = WORK_SIZE) -> torch.Tensor:
    """``[B, h, w]`` non-negative CAMs -> divided by their max (+1e-6), bilinearly resized to
    ``[B, size, size]`` (align_corners=False, cv2.resize's convention)."""
    cams = cams.float()
    peak = cams.flatten(1).max(dim=1).values.clamp_min(0)
    cams = cams / (peak[:, None, None] + 1e-6)
    return F.interpolate(cams[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def gaussian_from_weights(weights: np.ndarray, grid=None, *, variance_divisor: float = VARIANCE_DIVISOR,
                          eps: float = DEGENERATE_EPS):
    """The reference's bivariate Gaussian for one weight map ``[H, W]`` (any non-negative values,
    normalised here to sum 1). Returns ``[H, W]`` float64 in (0, 1], or ``None`` for a degenerate
    region (zero total weight, zero variance or |correlation| = 1)."""
    weights = np.asarray(weights, dtype=np.float64)
    ys, xs = np.nonzero(weights > 0)
    total = weights[ys, xs].sum() if ys.size else 0.0
    if total <= 0:
        return None
    w = weights[ys, xs] / total
    ux, uy = float((w * xs).sum()), float((w * ys).sum())
    sx = float((w * (xs - ux) ** 2).sum()) / variance_divisor
    sy = float((w * (ys - uy) ** 2).sum()) / variance_divisor
    sxy = float((w * (xs - ux) * (ys - uy)).sum()) / variance_divisor
    if sx <= eps or sy <= eps:
        return None
    one_minus_rho2 = 1.0 - sxy * sxy / (sx * sy)
    if one_minus_rho2 <= eps:
        return None
    gy, gx = _grid(weights.shape) if grid is None else grid
    dx = (gx - ux) ** 2 / sx
    dy = (gy - uy) ** 2 / sy
    dxy = (gx - ux) * (gy - uy) * sxy / (sx * sy)
    c = -1.0 / (2.0 * one_minus_rho2)
    return np.exp(c * (dx - 2.0 * dxy + dy))


def gaussian_prior(cam: np.ndarray, *, low: float = BAND_LOW, high: float = BAND_HIGH,
                   min_area: float = MIN_CONTOUR_AREA, variance_divisor: float = VARIANCE_DIVISOR) -> np.ndarray:
    """Gaussian channel ``[H, W]`` float in [0, 1] of a max-normalised CAM ``[H, W]`` (module docstring)."""
    cam = np.asarray(cam, dtype=np.float64)
    band = np.where((cam >= low) & (cam <= high), cam, 0.0)
    prior = np.zeros_like(cam)
    contours, _ = cv2.findContours((band > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    grid = _grid(cam.shape)
    for contour in contours:
        if cv2.contourArea(contour) < min_area:
            continue
        filled = np.zeros(cam.shape, dtype=np.uint8)
        cv2.drawContours(filled, [contour], -1, 1, thickness=-1)
        gauss = gaussian_from_weights(band * filled, grid, variance_divisor=variance_divisor)
        if gauss is not None:
            np.maximum(prior, gauss, out=prior)
    return prior


def pseudo_mask_image(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Max-normalised ``[S, S]`` CAM (step 1) -> uint8 ``[H, W, 3]`` RGB pseudo mask at ``size`` =
    (width, height) of the original image: R = CAM, G = Gaussian prior, B = 0."""
    cam = np.asarray(cam, dtype=np.float64)
    width, height = int(size[0]), int(size[1])
    channels = np.empty(cam.shape + (2,), np.float32)  # R and G; B is zero
    channels[:, :, 0] = cam * 255.0
    channels[:, :, 1] = gaussian_prior(cam) * 255.0
    resized = cv2.resize(channels, (width, height), interpolation=cv2.INTER_LINEAR)
    out = np.zeros((height, width, 3), np.uint8)
    out[:, :, :2] = np.clip(np.rint(resized), 0, 255)
    return out


def pseudo_mask_from_cam(raw_cam, size: tuple[int, int], work_size: int = WORK_SIZE) -> np.ndarray:
    """Single-image convenience: raw non-negative CAM ``[h, w]`` -> uint8 ``[H, W, 3]`` pseudo mask."""
    cam = torch.as_tensor(np.asarray(raw_cam, dtype=np.float32))[None]
    return pseudo_mask_image(normalize_and_resize(cam, work_size)[0].numpy(), size)
