"""Box conventions of SLT-Net's regressor and pseudo boxes from localization maps.

* Pixel boxes are ``x0, y0, x1, y1`` in input-pixel coordinates of the image the network saw
  (``utils.cam.boxes_from_maps`` convention: ``x1 = min(x0 + w, W - 1)``, scored with the inclusive
  IoU of Choe et al.).
* The regressor predicts ``p = (x1/W, y1/H, x2/W, y2/H)`` (Sec. 3.1: coordinates divided by the
  input size): :func:`normalize_boxes` / :func:`denormalize_boxes` convert both ways, exactly
  inverse to each other in floating point up to rounding.
* ``boxes.csv`` (hand-off file, read and written by ``utils.predictions``): header
  ``image_id,x0,y0,x1,y1`` in input pixels of the protocol geometry; a sidecar ``boxes.json`` says
  which protocol / input size / threshold produced them.
"""
from __future__ import annotations


import numpy as np
import torch

from utils.cam import boxes_from_maps, normalize_minmax, resize_maps

def _size_vector(size, like):
    """(W, H, W, H) for ``size`` = int or (width, height)."""
    w, h = (size, size) if isinstance(size, (int, float)) else size
    if isinstance(like, torch.Tensor):
        return torch.tensor([w, h, w, h], dtype=like.dtype if like.is_floating_point() else torch.float32,
                            device=like.device)
    return np.array([w, h, w, h], dtype=np.float64)


def normalize_boxes(boxes, size):
    """Pixel boxes [..., 4] -> boxes divided by the input size; ``size`` = int or (width, height)."""
    if isinstance(boxes, torch.Tensor):
        return boxes.float() / _size_vector(size, boxes.float())
    return np.asarray(boxes, dtype=np.float64) / _size_vector(size, None)


def denormalize_boxes(boxes, size):
    """Inverse of :func:`normalize_boxes`: normalised boxes [..., 4] -> pixel boxes (float)."""
    if isinstance(boxes, torch.Tensor):
        return boxes.float() * _size_vector(size, boxes.float())
    return np.asarray(boxes, dtype=np.float64) * _size_vector(size, None)


@torch.no_grad()
def pseudo_boxes(maps: torch.Tensor, input_size, threshold: float) -> np.ndarray:
    """Boxes [B, 4] (input pixels, int) from localization maps [B, h, w] (Sec. 3.2's CAM rule).

    Maps are upsampled to the input size (bilinear), min-max normalised per image, thresholded at
    ``threshold`` times the map's maximum, and the box of the largest connected component is kept
    (``utils.cam.boxes_from_maps`` with Choe et al.'s rule). An empty map gives [0, 0, 0, 0].
    """
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)  # (H, W)
    scoremaps = normalize_minmax(resize_maps(maps.detach().float(), size)).cpu().numpy()
    return np.stack([b[0] for b in boxes_from_maps(scoremaps, threshold)]).astype(np.int64)
