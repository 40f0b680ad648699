"""The seg stage's overlay grid (``boxes.csv`` is written by ``utils.evaluation.handoff.write_boxes_csv``:
one line per evaluated image, the predicted box in pixels of the protocol's input; ``[0, 0, 0, 0]``
= no foreground, a miss).

``grid.png`` (``utils.evaluation.visualize.stage_picture``): a title row, a legend row, then one 224-pixel tile
per image (id above it) at the protocol geometry, the score map blended in the jet colour map with
opacity 0.6 x map, ground-truth boxes in green, the predicted box in red (none drawn for ``[0, 0, 0, 0]``).
"""
from __future__ import annotations

from utils.io import atomic_save_png
from utils.evaluation.protocol import get_protocol
from utils.evaluation.visualize import GREEN, PAD, RED, stage_picture


def write_grid(path, records, scoremaps: dict, boxes: dict, protocol, *, max_images: int = 16, cols: int = 4,
               pad: int = PAD, title: str | None = None, images: dict | None = None) -> None:
    """``grid.png`` of the first ``max_images`` records (score map overlay, GT green, prediction red)
    at the geometry of ``protocol`` (a :mod:`utils.evaluation.protocol` object, or a name at 224 / 256).
    ``images``: image id -> RGB uint8 input as the network saw it (the test step keeps them from its
    batches); an image not given is read and resized by ``protocol.image``."""
    protocol = get_protocol(protocol)
    tiles, box_sets, maps, ids = [], [], [], []
    for record in list(records)[:max_images]:
        tiles.append(images[record.image_id] if images and record.image_id in images else protocol.image(record))
        gt = protocol.gt_boxes(record.boxes, record.size)
        box_sets.append([(gt, GREEN), (boxes[record.image_id], RED)])
        maps.append(scoremaps[record.image_id])
        ids.append(record.image_id)
    if tiles:
        title = title or f"SPOL seg test: score map and boxes ({protocol.label} protocol: {protocol.describe()})"
        atomic_save_png(path, stage_picture(tiles, box_sets, scoremaps=maps, ids=ids, title=title, cols=cols,
                                            pad=pad, legend=[("ground-truth box", GREEN), ("predicted box", RED)]))
