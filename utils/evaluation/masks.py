"""OpenImages30k's ground truth as Choe et al.'s MaskEvaluator builds it (wsolevaluation ``get_mask``):
the union of an image's instance masks and its ignore region, at the evaluated size. The rule:
[docs/evaluation.md](../../docs/evaluation.md) (OpenImages30k).
"""
from __future__ import annotations

import os

import cv2
import numpy as np

from utils.errors import DataError
from utils.evaluation.boxes import single_thread_cv2


def load_mask_image(path: str, size: int) -> np.ndarray:
    """float32 ``(size, size)`` mask: grayscale, nearest-resized (Choe et al.'s ``load_mask_image``)."""
    with single_thread_cv2():   # no OpenCV worker pool in a process that forks later
        mask = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        if mask is None:
            kind = "not found" if not os.path.isfile(path) else "unreadable or corrupt"
            raise DataError.at(path, msg=f"mask {kind}")
        return cv2.resize(np.float32(mask), (size, size), interpolation=cv2.INTER_NEAREST)


def instance_ground_truth(record, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(foreground, ignore), bool ``(size, size)``, of a record with ``instance_mask_paths``
    (:mod:`utils.data.layouts`, "openimages"): the union of its instance masks, and its ignore mask
    minus that union (all False without an ignore mask)."""
    if not record.instance_mask_paths:
        raise DataError.at(record.path, msg="no instance mask for this image (the 'openimages' layout "
                                            "lists them in <split>/localization.txt)")
    foreground = np.zeros((size, size), bool)
    for path in record.instance_mask_paths:
        foreground |= load_mask_image(path, size) > 0.5
    if record.ignore_mask_path is None:
        return foreground, np.zeros((size, size), bool)
    ignore = (load_mask_image(record.ignore_mask_path, size) > 0.5) & ~foreground
    return foreground, ignore
