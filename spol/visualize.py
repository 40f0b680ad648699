"""The seg stage's overlay grid (``boxes.csv`` is written by ``utils.predictions.write_boxes_csv``:
one line per evaluated image, the predicted box in pixels of the protocol's input; ``[0, 0, 0, 0]``
= no foreground, a miss).

``grid.png`` (``utils.visualize.stage_picture``): a title row, a legend row, then one 224-pixel tile
per image (id above it) at the protocol geometry, the score map blended in the jet colour map with
opacity 0.6 x map, ground-truth boxes in green, the predicted box in red (none drawn for ``[0, 0, 0, 0]``).
"""
from __future__ import annotations

import cv2
import numpy as np

from utils.data import protocol_geometry, transform_boxes
from utils.io import atomic_save_png
from utils.cam import single_thread_cv2
from utils.visualize import GREEN, PAD, RED, stage_picture


def protocol_image(record, protocol: str, input_size: int, resize_size: int) -> np.ndarray:
    """The record's RGB uint8 image as the network saw it (resize, then centre crop for 'spol')."""
    with single_thread_cv2():   # no OpenCV worker pool in a process that forks later
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


def write_grid(path, records, scoremaps: dict, boxes: dict, protocol: str, input_size: int, resize_size: int,
               *, max_images: int = 16, cols: int = 4, pad: int = PAD, title: str | None = None) -> None:
    """``grid.png`` of the first ``max_images`` records (score map overlay, GT green, prediction red)."""
    images, box_sets, maps, ids = [], [], [], []
    for record in list(records)[:max_images]:
        images.append(protocol_image(record, protocol, input_size, resize_size))
        gt = transform_boxes(record.boxes, record.size, protocol, input_size, resize_size)
        box_sets.append([(gt, GREEN), (boxes[record.image_id], RED)])
        maps.append(scoremaps[record.image_id])
        ids.append(record.image_id)
    if images:
        geom = protocol_geometry(protocol, input_size, resize_size)
        geometry = (f"resize {geom['resize'][0]}, centre crop {input_size}" if geom["crop"] is not None
                    else f"whole image at {input_size}")
        title = title or f"SPOL seg test: score map and boxes ({protocol} protocol: {geometry})"
        atomic_save_png(path, stage_picture(images, box_sets, scoremaps=maps, ids=ids, title=title, cols=cols,
                                            pad=pad, legend=[("ground-truth box", GREEN), ("predicted box", RED)]))
