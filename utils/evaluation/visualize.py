"""Box drawing and the stages' ``grid.png`` pictures (:func:`stage_picture`: a title row, a legend row,
one tile per image with its id; the score map blended in the jet colour map with opacity ``alpha *
map``; boxes: ground truth green, prediction red, SLT-Net's localizer-map box blue).
"""
from __future__ import annotations

import cv2
import numpy as np

from utils.evaluation.boxes import single_thread_cv2

GREEN, BLUE, RED = (0, 200, 0), (40, 90, 255), (230, 20, 20)   # RGB
COLOUR_NAMES = {GREEN: "ground-truth box", RED: "predicted box", BLUE: "localizer-map box"}
TILE, PAD, CAPTION_H, TITLE_H, LEGEND_H = 224, 6, 20, 30, 24   # pixels of stage_picture's layout
_BACKGROUND = (255, 255, 255)


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


def overlay_scoremap(image: np.ndarray, scoremap, alpha: float = 0.6) -> np.ndarray:
    """Blend a [0, 1] score map (any size; resized bilinearly) over an RGB uint8 image in the jet
    colour map, with per-pixel opacity ``alpha * map`` (a zero map leaves the image unchanged)."""
    h, w = image.shape[:2]
    m = np.clip(np.nan_to_num(np.asarray(scoremap, dtype=np.float32)), 0.0, 1.0)
    if m.shape != (h, w):
        m = np.clip(cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
    heat = cv2.cvtColor(cv2.applyColorMap((m * 255).round().astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    a = (alpha * m)[..., None]
    return (image.astype(np.float32) * (1 - a) + heat.astype(np.float32) * a).round().astype(np.uint8)


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)   # Pillow >= 10.1 with FreeType
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _text_width(font, text: str) -> int:
    return int(np.ceil(font.getlength(text)))


def _fit_text(font, text: str, width: int) -> str:
    """``text`` if it fits ``width`` pixels, else its file name, cut from the left with an ellipsis
    until it fits (image ids are ``<folder>/<file name>``)."""
    if _text_width(font, text) <= width:
        return text
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    while text and _text_width(font, "…" + text) > width:
        text = text[1:]
    return "…" + text


def picture_layout(n: int, cols: int = 4, tile: int = TILE, pad: int = PAD, header: int = TITLE_H + LEGEND_H):
    """Canvas (height, width) of ``n`` tiles in ``cols`` columns below a ``header``-pixel heading
    (``stage_picture`` widens it when the title or legend is longer), and each tile's top-left
    (y, x) corner (its caption sits in the ``CAPTION_H`` pixels above)."""
    cols = max(1, min(cols, n))
    rows = (n + cols - 1) // cols
    cell_h = CAPTION_H + tile + pad
    origins = [(header + pad + r * cell_h + CAPTION_H, pad + c * (tile + pad))
               for r, c in (divmod(i, cols) for i in range(n))]
    return (header + pad + rows * cell_h, pad + cols * (tile + pad)), origins


def _fit_tile(image: np.ndarray, tile: int):
    """The image scaled so its longer side is ``tile`` pixels (bilinear), and the scale."""
    h, w = image.shape[:2]
    s = tile / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    if size != (w, h):
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(image), s


def stage_picture(images: list[np.ndarray], box_sets=None, *, scoremaps=None, ids=None, title: str | None = None,
                  legend=None, cols: int = 4, tile: int = TILE, pad: int = PAD, alpha: float = 0.6,
                  thickness: int = 2) -> np.ndarray:
    """A slide-ready RGB uint8 picture of ``images`` (RGB uint8, each in its own pixel frame).

    ``box_sets[i]``: ``[(boxes, colour), ...]`` in image ``i``'s pixels, drawn in that order (all-zero
    boxes, the "no foreground" placeholder, are not drawn); ``scoremaps[i]``: a [0, 1] map of image
    ``i`` or None; ``ids[i]``: its caption; ``legend``: ``[(label, colour), ...]`` (default: the names
    in ``COLOUR_NAMES`` of the colours used). Tiles are ``tile`` pixels, ``cols`` per row.
    """
    with single_thread_cv2():
        return _stage_picture(images, box_sets, scoremaps, ids, title, legend, cols, tile, pad, alpha, thickness)


def _stage_picture(images, box_sets, scoremaps, ids, title, legend, cols, tile, pad, alpha, thickness):
    if not images:
        raise ValueError("stage_picture: no image")
    n = len(images)
    box_sets = list(box_sets) if box_sets is not None else [[] for _ in range(n)]
    scoremaps = list(scoremaps) if scoremaps is not None else [None] * n
    ids = [str(i) for i in ids] if ids is not None else [f"#{i}" for i in range(n)]
    if not len(box_sets) == len(scoremaps) == len(ids) == n:
        raise ValueError(f"stage_picture: {n} images but {len(box_sets)} box sets, "
                         f"{len(scoremaps)} score maps, {len(ids)} ids")
    if legend is None:
        used = {tuple(colour) for sets in box_sets for _, colour in sets}
        legend = [(name, colour) for colour, name in COLOUR_NAMES.items() if colour in used]
        legend += [(f"box {colour}", colour) for colour in sorted(used - set(COLOUR_NAMES))]
    has_maps = any(m is not None for m in scoremaps)

    title_font, legend_font, caption_font = _font(18), _font(14), _font(13)
    entries = [(label, colour) for label, colour in legend] + ([("score map (low to high)", None)] if has_maps else [])
    swatches = [44 if colour is None else 22 for _, colour in entries]
    widths = [sw + 6 + _text_width(legend_font, label) + 18 for sw, (label, _) in zip(swatches, entries)]
    (height, width), origins = picture_layout(n, cols, tile, pad)
    width = max(width, sum(widths) + 2 * pad, _text_width(title_font, title) + 2 * pad if title else 0)
    canvas = np.full((height, width, 3), _BACKGROUND, dtype=np.uint8)

    for image, sets, scoremap, (y, x) in zip(images, box_sets, scoremaps, origins):
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        scaled, s = _fit_tile(image.astype(np.uint8), tile)
        if scoremap is not None:
            scaled = overlay_scoremap(scaled, scoremap, alpha)
        for boxes, colour in sets:
            boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            boxes = boxes[np.any(boxes != 0, axis=1)] * s   # clipped so an edge on the border stays visible
            boxes = np.clip(boxes, 0, [scaled.shape[1] - 1, scaled.shape[0] - 1] * 2)
            scaled = draw_boxes(scaled, boxes, tuple(int(c) for c in colour), thickness)
        h, w = scaled.shape[:2]
        oy, ox = y + (tile - h) // 2, x + (tile - w) // 2
        canvas[oy:oy + h, ox:ox + w] = scaled

    # legend swatches and the colour bar are drawn in numpy/cv2; all text with PIL
    texts = []   # (x, y, text, font)
    if title:
        texts.append((pad, 4, title, title_font))
    lx, ly = pad, TITLE_H + 4   # one legend row (the canvas is widened to hold it)
    for (label, colour), swatch, need in zip(entries, swatches, widths):
        sy = ly + 3
        if colour is None:
            bar = cv2.applyColorMap(np.linspace(0, 255, swatch).astype(np.uint8)[None].repeat(12, 0), cv2.COLORMAP_JET)
            canvas[sy:sy + 12, lx:lx + swatch] = cv2.cvtColor(bar, cv2.COLOR_BGR2RGB)
        else:
            cv2.rectangle(canvas, (lx, sy), (lx + swatch - 1, sy + 11), tuple(int(c) for c in colour), thickness)
        texts.append((lx + swatch + 6, ly, label, legend_font))
        lx += need
    for ident, (y, x) in zip(ids, origins):
        texts.append((x, y - CAPTION_H + 3, _fit_text(caption_font, ident, tile), caption_font))

    from PIL import Image, ImageDraw
    pil = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pil)
    for x, y, text, font in texts:
        draw.text((x, y), text, fill=(20, 20, 20), font=font)
    return np.asarray(pil).copy()


def box_grid(images: list[np.ndarray], box_sets: list[list[tuple[np.ndarray, tuple]]], cols: int = 4,
             pad: int = PAD, **picture) -> np.ndarray:
    """``stage_picture`` of RGB images with their boxes: ``box_sets[i]`` = [(boxes, colour), ...];
    keyword arguments (``ids``, ``scoremaps``, ``title``, ``legend``, ``tile``) go to it."""
    if not images:
        raise ValueError("box_grid: no image")
    return stage_picture(images, box_sets, cols=cols, pad=pad, **picture)
