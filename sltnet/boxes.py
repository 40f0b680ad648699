"""Box conventions of SLT-Net's regressor, pseudo boxes from localization maps, boxes.csv I/O.

* Pixel boxes are ``x0, y0, x1, y1`` in input-pixel coordinates of the image the network saw
  (``utils.cam.boxes_from_maps`` convention: ``x1 = min(x0 + w, W - 1)``, scored with the inclusive
  IoU of Choe et al.).
* The regressor predicts ``p = (x1/W, y1/H, x2/W, y2/H)`` (Sec. 3.1: coordinates divided by the
  input size): :func:`normalize_boxes` / :func:`denormalize_boxes` convert both ways, exactly
  inverse to each other in floating point up to rounding.
* ``boxes.csv`` (hand-off file): header ``image_id,x0,y0,x1,y1`` in input pixels of the protocol
  geometry; a sidecar ``boxes.json`` says which protocol / input size / threshold produced them.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from utils.cam import boxes_from_maps, normalize_minmax, resize_maps
from utils.errors import DataError
from utils.io import atomic_write, atomic_write_json

BOXES_HEADER = ["image_id", "x0", "y0", "x1", "y1"]


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


def write_boxes_csv(path, image_ids, boxes, *, meta: dict | None = None) -> None:
    """Write ``boxes.csv`` (``image_id,x0,y0,x1,y1``) atomically, and ``boxes.json`` beside it."""
    boxes = np.asarray(boxes)
    with atomic_write(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(BOXES_HEADER)
        for image_id, box in zip(image_ids, boxes):
            writer.writerow([image_id, *[f"{float(v):g}" for v in box]])
    if meta is not None:
        atomic_write_json(Path(path).with_suffix(".json"), meta)


def read_boxes_csv(path, *, written_by: str = "sltnet/localizer/test.py") -> tuple[dict, dict]:
    """Read ``boxes.csv`` -> ({image_id: float array (4,)}, sidecar metadata dict or {}).

    A missing file or a malformed line raises ``DataError`` naming the file (and line) and the stage
    that writes it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError.at(path, None, f"not found: run {written_by} first (it writes boxes.csv)")
    boxes = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != BOXES_HEADER:
            raise DataError.at(path, 1, f"header must be {','.join(BOXES_HEADER)}, got {header}")
        for line, row in enumerate(reader, start=2):
            if len(row) != 5:
                raise DataError.at(path, line, f"expected 5 fields, got {len(row)}")
            try:
                box = np.array([float(v) for v in row[1:]], dtype=np.float64)
            except ValueError:
                raise DataError.at(path, line, f"non-numeric box {row[1:]}") from None
            if not np.all(np.isfinite(box)) or box[2] < box[0] or box[3] < box[1]:
                raise DataError.at(path, line, f"invalid box {row[1:]} (need x0<=x1, y0<=y1)")
            if row[0] in boxes:
                raise DataError.at(path, line, f"duplicate image_id {row[0]}")
            boxes[row[0]] = box
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    return boxes, meta
