"""Box drawing and image tiling shared by the stages' ``grid.png`` pictures (SPOL seg test: score map
overlay with GT and predicted boxes; SLT-Net final test: GT, localizer and regressor boxes)."""
from __future__ import annotations

import cv2
import numpy as np

GREEN, BLUE, RED = (0, 200, 0), (40, 90, 255), (230, 20, 20)   # RGB


def draw_boxes(image: np.ndarray, boxes, colour, thickness: int | None = None) -> np.ndarray:
    """Draw (n, 4) ``x0, y0, x1, y1`` pixel boxes on a copy of an RGB uint8 image."""
    out = np.ascontiguousarray(image.copy())
    thickness = thickness or max(1, round(min(image.shape[:2]) / 112))
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        cv2.rectangle(out, (int(round(x0)), int(round(y0))), (int(round(x1)), int(round(y1))), colour, thickness)
    return out


def tile_images(images: list[np.ndarray], cols: int = 4, pad: int = 4) -> np.ndarray:
    """Tile RGB uint8 images of one size into a grid with white ``pad``-pixel gaps."""
    if not images:
        raise ValueError("tile_images: no image")
    h, w = images[0].shape[:2]
    cols = max(1, min(cols, len(images)))
    rows = (len(images) + cols - 1) // cols
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = image
    return grid


def box_grid(images: list[np.ndarray], box_sets: list[list[tuple[np.ndarray, tuple]]], cols: int = 4,
             pad: int = 4) -> np.ndarray:
    """Tile RGB images (same size) with their boxes: ``box_sets[i]`` = [(boxes, colour), ...]."""
    if not images:
        raise ValueError("box_grid: no image")
    drawn = []
    for image, sets in zip(images, box_sets):
        for boxes, colour in sets:
            image = draw_boxes(image, boxes, colour)
        drawn.append(image)
    return tile_images(drawn, cols, pad)
