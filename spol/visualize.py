"""The seg stage's overlay grid (``boxes.csv`` is written by ``utils.predictions.write_boxes_csv``:
one line per evaluated image, the predicted box in pixels of the protocol's input; ``[0, 0, 0, 0]``
= no foreground, a miss).

``grid.png``: images at the protocol geometry with the score map overlaid (jet colour map, 50%),
ground-truth boxes in green, the predicted box in red.
"""
from __future__ import annotations

import cv2
import numpy as np

from utils.data import protocol_geometry, transform_boxes
from utils.io import atomic_save_png
from utils.visualize import GREEN, RED, draw_boxes, tile_images


def protocol_image(record, protocol: str, input_size: int, resize_size: int) -> np.ndarray:
    """The record's RGB uint8 image as the network saw it (resize, then centre crop for 'spol')."""
    image = cv2.imread(record.path, cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"{record.path}: image not found or unreadable")
    geom = protocol_geometry(protocol, input_size, resize_size)
    h, w = geom["resize"]
    image = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), (w, h), interpolation=cv2.INTER_LINEAR)
    if geom["crop"] is not None:
        ox, oy = geom["offset"]
        image = image[oy:oy + input_size, ox:ox + input_size]
    return np.ascontiguousarray(image)


def overlay(image: np.ndarray, scoremap: np.ndarray, gt_boxes, pred_box) -> np.ndarray:
    heat = cv2.applyColorMap(np.clip(scoremap * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    out = cv2.addWeighted(image, 0.5, cv2.cvtColor(heat, cv2.COLOR_BGR2RGB), 0.5, 0)
    return draw_boxes(draw_boxes(out, gt_boxes, GREEN), pred_box, RED)


def write_grid(path, records, scoremaps: dict, boxes: dict, protocol: str, input_size: int, resize_size: int,
               *, max_images: int = 16, cols: int = 4, pad: int = 4) -> None:
    """``grid.png`` of the first ``max_images`` records (score map overlay, GT green, prediction red)."""
    tiles = []
    for record in list(records)[:max_images]:
        image = protocol_image(record, protocol, input_size, resize_size)
        gt = transform_boxes(record.boxes, record.size, protocol, input_size, resize_size)
        tiles.append(overlay(image, scoremaps[record.image_id], gt, boxes[record.image_id]))
    if tiles:
        atomic_save_png(path, tile_images(tiles, cols, pad))
