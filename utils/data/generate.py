"""A generated fine-grained "birds" dataset in the CUB-200-2011 layout, for demos and tests.

    python -m utils.data.generate --out dataset/synth_birds --classes 6 --train-per-class 60 \
        --test-per-class 25 --size 64 --seed 0

Every image shows one bird (body ellipse, wing, tail, head, eye, beak, crest) on a cluttered
background. The **class is decided by a small part**, the head: each class has its own head
colour, crest shape, crest colour and beak colour (classes share some of these, as related
species do; no two classes share all four). Body colour, size, aspect, pose (rotation, facing
left/right) and position vary at random, so the head is the one part that always tells the
class; with ``body_evidence > 0`` a fraction of the birds also wear their class's body colour
(muted hues spread around the colour circle, jittered), evidence that makes the rest of the
object useful to a classifier (as plumage is in CUB). The defaults are those of ``demo.py``
(``configs/demo.yaml``): with ``body_evidence=0`` a CAM network trained from scratch looks at the
head alone (part domination) and its boxes cover the head only. The background holds smooth coloured noise, random shapes and distractors: headless
bird bodies (object-like, but without the class part). Segmentation masks cover the bird only.

Layout written (the same files and formats as CUB-200-2011, so ``utils.data.layouts.load_records(root,
"cub", split)`` reads it like the real dataset)::

    classes.txt              "<class id> <NNN.Name>"            (1-based ids)
    images.txt               "<image id> <NNN.Name>/<Name>_<NNNN>.jpg"
    image_class_labels.txt   "<image id> <class id>"
    train_test_split.txt     "<image id> <1 = train, 0 = test>"
    bounding_boxes.txt       "<image id> <x> <y> <w> <h>"        (floats, as CUB writes them)
    images/<NNN.Name>/<Name>_<NNNN>.jpg
    segmentations/<NNN.Name>/<Name>_<NNNN>.png                  (uint8, 0 or 255)
    generator.json           the arguments that produced the folder (not part of CUB)

Box convention: ``x, y, w, h = cv2.boundingRect(mask > 0)``, i.e. ``w, h`` count pixels and
``x + w, y + h`` lie one past the last object pixel -- the rule ``utils.evaluation.boxes.boxes_from_maps``
applies to score maps, so a box from the true mask reproduces the ground-truth box exactly.

Determinism: the same arguments give byte-identical files (one random generator per image,
seeded by ``(seed, image index)``; class attributes from ``(seed, "classes")``).
Atomicity: the dataset is written into a temporary sibling folder which is renamed into place
with ``os.replace`` only when complete, so a crash never leaves a half-written dataset.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from utils.io import atomic_write_json

# Distinct, saturated colours (RGB) for the class-deciding part; body colours are drawn apart.
PART_COLOURS = {
    "Red": (220, 30, 30), "Yellow": (240, 220, 20), "Blue": (30, 70, 230), "Green": (30, 190, 50),
    "White": (245, 245, 245), "Black": (15, 15, 15), "Orange": (250, 130, 10),
    "Purple": (140, 40, 200), "Cyan": (20, 220, 230), "Pink": (250, 120, 190),
}
CREST_SHAPES = ("Spiked", "Fan", "Tufted", "Bald")   # "Bald" = no crest
BEAK_COLOURS = ("Red", "Yellow", "Black", "White", "Orange", "Blue")
HEAD_COLOURS = ("Red", "Yellow", "Blue", "Green", "White", "Black", "Orange", "Purple", "Cyan", "Pink")
CREST_COLOURS = HEAD_COLOURS
GENERATOR_VERSION = 1
SUPERSAMPLE = 2  # drawing resolution factor (anti-aliased images; masks thresholded at 50 %)


@dataclass(frozen=True)
class BirdClass:
    """The rendering parameters of one class's deciding part (and its typical body colour)."""
    index: int                      # 0-based
    folder: str                     # "001.Spiked_Red_crested_Blue_headed"
    head: str
    crest_shape: str
    crest: str
    beak: str
    body_rgb: tuple[int, int, int]  # the body colour a fraction ``body_evidence`` of birds wear


def make_classes(num_classes: int, seed: int) -> list[BirdClass]:
    """Distinct (head, crest shape, crest colour, beak) combinations, deterministic by seed."""
    # a crest of the head's own colour would be invisible; a bald head has no crest colour
    combos = [(h, s, c if s != "Bald" else "None", b)
              for h, s, c, b in itertools.product(HEAD_COLOURS, CREST_SHAPES, CREST_COLOURS, BEAK_COLOURS)
              if c != h and (s != "Bald" or c == CREST_COLOURS[1 if h == CREST_COLOURS[0] else 0])]
    if not 1 <= num_classes <= len(combos):
        raise ValueError(f"num_classes must be in 1..{len(combos)}, got {num_classes}")
    rng = np.random.default_rng([seed, 0x5EED])
    picked = rng.choice(len(combos), size=num_classes, replace=False)
    # body colours spread around the hue circle (muted), in a random order
    hues = (np.arange(num_classes) / num_classes + rng.random()) % 1.0
    hues = hues[rng.permutation(num_classes)]
    classes = []
    for k, (ci, hue) in enumerate(zip(picked, hues)):
        head, shape, crest, beak = combos[ci]
        if shape == "Bald":
            name = f"Bald_{beak}_billed_{head}_headed"
        else:
            name = f"{shape}_{crest}_crested_{beak}_billed_{head}_headed"
        classes.append(BirdClass(k, f"{k + 1:03d}.{name}", head, shape, crest, beak, _hsv_rgb(hue, 0.55, 0.75)))
    return classes


def _hsv_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    hsv = np.array([[[h * 180.0, s * 255.0, v * 255.0]]], dtype=np.float32)
    rgb = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0]
    return tuple(int(c) for c in rgb)


# ----------------------------------------------------------------------------- drawing
def _affine(points: np.ndarray, scale: float, angle: float, flip: bool, centre) -> np.ndarray:
    """Bird-frame points (unit = body semi-major axis, +x = facing direction) to canvas pixels."""
    p = points.astype(np.float64).copy()
    if flip:
        p[:, 0] = -p[:, 0]
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return p @ rot.T * scale + np.asarray(centre, dtype=np.float64)


def _ellipse(cx, cy, ax, ay, rot_deg=0.0, n=36) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = ax * np.cos(t), ay * np.sin(t)
    r = np.deg2rad(rot_deg)
    return np.stack([cx + x * np.cos(r) - y * np.sin(r), cy + x * np.sin(r) + y * np.cos(r)], 1)


def _fill(canvas, mask, pts, colour):
    pts = np.round(pts * 16).astype(np.int32)[None]   # 4 fractional bits
    cv2.fillPoly(canvas, pts, colour, lineType=cv2.LINE_AA, shift=4)
    if mask is not None:
        cv2.fillPoly(mask, pts, 255, lineType=cv2.LINE_8, shift=4)


def _jitter(rng, rgb, amount=18):
    return tuple(int(v) for v in np.clip(np.asarray(rgb) + rng.integers(-amount, amount + 1, 3), 0, 255))


def bird_polygons(rng, cls: BirdClass | None, body_rgb, *, with_head=True):
    """Parts of one bird in its own frame: (list of (polygon Nx2, RGB colour) back to front,
    head centre (2,) or None)."""
    aspect = rng.uniform(0.42, 0.62)                       # body height / length
    parts = []
    tail_len = rng.uniform(0.45, 0.75)
    tail_w = rng.uniform(0.18, 0.32)
    parts.append((np.array([[-0.8, 0.0], [-0.8 - tail_len, -tail_w], [-0.8 - tail_len * 0.85, 0.0],
                            [-0.8 - tail_len, tail_w]]), _jitter(rng, np.asarray(body_rgb) * 0.8)))
    parts.append((_ellipse(0, 0, 1.0, aspect, 0), body_rgb))
    wing_rgb = _jitter(rng, np.asarray(body_rgb) * rng.uniform(0.55, 0.8))
    parts.append((_ellipse(-0.15, -0.05, 0.62, aspect * 0.55, rng.uniform(-12, 8)), wing_rgb))
    if not with_head:
        return parts, None
    hr = rng.uniform(0.30, 0.38)                           # head radius
    hx, hy = 0.88 + rng.uniform(-0.05, 0.05), -aspect * rng.uniform(0.55, 0.9)
    head_rgb = _jitter(rng, PART_COLOURS[cls.head], 10)
    crest_rgb = _jitter(rng, PART_COLOURS[cls.crest], 10)
    if cls.crest_shape == "Spiked":
        parts.append((np.array([[hx - 0.6 * hr, hy - 0.5 * hr], [hx - 0.1 * hr, hy - 2.1 * hr],
                                [hx + 0.3 * hr, hy - 0.6 * hr]]), crest_rgb))
    elif cls.crest_shape == "Fan":
        parts.append((_ellipse(hx - 0.25 * hr, hy - 0.9 * hr, 0.95 * hr, 0.75 * hr, -25), crest_rgb))
    elif cls.crest_shape == "Tufted":
        for dx, tip in ((-0.7, -1.7), (-0.1, -2.0), (0.45, -1.6)):
            parts.append((np.array([[hx + (dx - 0.25) * hr, hy - 0.5 * hr], [hx + (dx - 0.35) * hr, hy + tip * hr],
                                    [hx + (dx + 0.25) * hr, hy - 0.5 * hr]]), crest_rgb))
    beak_len = rng.uniform(0.28, 0.42)
    parts.append((np.array([[hx + 0.7 * hr, hy - 0.35 * hr], [hx + hr + beak_len, hy + 0.1 * hr],
                            [hx + 0.7 * hr, hy + 0.45 * hr]]), _jitter(rng, PART_COLOURS[cls.beak], 10)))
    parts.append((_ellipse(hx, hy, hr, hr), head_rgb))
    eye = (20, 20, 20) if cls.head not in ("Black",) else (240, 240, 240)
    parts.append((_ellipse(hx + 0.35 * hr, hy - 0.2 * hr, 0.2 * hr, 0.2 * hr, n=12), eye))
    return parts, np.array([[hx - 0.3 * hr, hy + 0.3 * hr]])  # a head point clear of eye and crest


def _background(rng, size: int, clutter: float) -> np.ndarray:
    """Smooth coloured noise (low frequency) plus fine grain, float32 HxWx3 in [0, 255]."""
    base = rng.uniform(60, 200, 3)
    low = rng.normal(0, 1, (4, 4, 3)).astype(np.float32)
    mid = rng.normal(0, 1, (12, 12, 3)).astype(np.float32)
    img = (base + 35 * cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
           + 25 * clutter * cv2.resize(mid, (size, size), interpolation=cv2.INTER_CUBIC)
           + 10 * clutter * rng.normal(0, 1, (size, size, 3)))
    return img.astype(np.float32)


def _random_colour(rng):
    return tuple(int(v) for v in rng.integers(20, 236, 3))


def render_image(rng, cls: BirdClass, size: int, *, clutter: float, distractors: float,
                 body_evidence: float, object_scale: tuple[float, float]):
    """One image (uint8 HxWx3 RGB), its mask (uint8 HxW, 0/255) at ``size`` x ``size``, and a dict
    ``{"head_xy": (x, y) a point inside the head in image pixels, "body_rgb": body colour}``."""
    S = size * SUPERSAMPLE
    canvas = cv2.resize(_background(rng, size, clutter), (S, S), interpolation=cv2.INTER_LINEAR)
    # random shapes: rectangles, ellipses and thick lines in random colours
    for _ in range(rng.poisson(8 * clutter)):
        kind = rng.integers(3)
        c = rng.uniform(0, S, 2)
        r = rng.uniform(0.03, 0.15) * S
        col = _random_colour(rng)
        if kind == 0:
            pts = _ellipse(c[0], c[1], r, r * rng.uniform(0.3, 1), rng.uniform(0, 180))
        elif kind == 1:
            pts = _ellipse(c[0], c[1], r, r * rng.uniform(0.3, 1), rng.uniform(0, 180), n=4)
        else:
            a = rng.uniform(0, np.pi)
            d = np.array([np.cos(a), np.sin(a)]) * r * 2
            n = np.array([-d[1], d[0]]) / np.linalg.norm(d) * rng.uniform(0.01, 0.025) * S
            pts = np.stack([c - d - n, c + d - n, c + d + n, c - d + n])
        _fill(canvas, None, pts, col)
    # distractors: headless bird bodies (object-like, no class part)
    for _ in range(rng.poisson(distractors)):
        scale = rng.uniform(0.35, 0.7) * rng.uniform(*object_scale) * S / 2
        centre = rng.uniform(0.1, 0.9, 2) * S
        body_rgb = _random_colour(rng)
        angle, flip = rng.uniform(-0.6, 0.6), bool(rng.integers(2))
        for pts, col in bird_polygons(rng, None, body_rgb, with_head=False)[0]:
            _fill(canvas, None, _affine(pts, scale, angle, flip, centre), col)
    # the bird: size, pose, position at random; fully inside the image
    if rng.random() < body_evidence:
        body_rgb = _jitter(rng, cls.body_rgb, 25)
    else:
        body_rgb = _random_colour(rng)
    mask = np.zeros((S, S), np.uint8)
    parts, head = bird_polygons(rng, cls, body_rgb)
    angle, flip = rng.uniform(-0.5, 0.5), bool(rng.integers(2))
    # object_scale = bird length (beak to tail) as a fraction of the image side
    raw = np.concatenate([p for p, _ in parts])
    unit = _affine(raw, 1.0, angle, flip, (0, 0))
    extent = unit.max(0) - unit.min(0)
    scale = rng.uniform(*object_scale) * S / max(extent.max(), 1e-6)
    lo, hi = -unit.min(0) * scale + 1, S - 1 - unit.max(0) * scale
    centre = rng.uniform(lo, np.maximum(hi, lo))
    for pts, col in parts:
        _fill(canvas, mask, _affine(pts, scale, angle, flip, centre), col)
    image = cv2.resize(np.clip(canvas, 0, 255), (size, size), interpolation=cv2.INTER_AREA)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    mask = (cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA) >= 128).astype(np.uint8) * 255
    head_xy = (_affine(head, scale, angle, flip, centre)[0] + 0.5) / SUPERSAMPLE - 0.5
    return image, mask, {"head_xy": tuple(float(v) for v in head_xy), "body_rgb": tuple(body_rgb)}


# ----------------------------------------------------------------------------- dataset
def generate_dataset(out, *, num_classes: int, train_per_class: int, test_per_class: int,
                     image_size: int, seed: int, clutter: float = 0.5, distractors: float = 0.6,
                     body_evidence: float = 1.0, object_scale: tuple[float, float] = (0.4, 0.9),
                     jpeg_quality: int = 95, overwrite: bool = False, progress: bool = False) -> Path:
    """Write the dataset into ``out`` (CUB-200-2011 layout, see the module docstring); return ``out``.

    Args:
        clutter: 0..1, amount of background texture and random shapes (Poisson mean 8 * clutter).
        distractors: Poisson mean of headless bird bodies in the background.
        body_evidence: probability that a bird's body wears its class colour (else a random one).
        object_scale: range of the bird's length (tail to beak) as a fraction of the image side.
        overwrite: replace an existing ``out``; otherwise an existing non-empty ``out`` is an error.
    """
    out = Path(out)
    if num_classes < 1 or train_per_class < 0 or test_per_class < 0 or train_per_class + test_per_class < 1:
        raise ValueError(f"{out}: need at least 1 class and 1 image per class (got {num_classes} classes, "
                         f"{train_per_class} train + {test_per_class} test per class)")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    lo, hi = object_scale
    if not 0.1 <= lo <= hi <= 1.0:
        raise ValueError(f"object_scale must satisfy 0.1 <= lo <= hi <= 1, got {object_scale}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty: choose another folder, or pass "
                              "overwrite=True / --overwrite to replace it")
    params = dict(version=GENERATOR_VERSION, num_classes=num_classes, train_per_class=train_per_class,
                  test_per_class=test_per_class, image_size=image_size, seed=seed, clutter=clutter,
                  distractors=distractors, body_evidence=body_evidence, object_scale=[lo, hi],
                  jpeg_quality=jpeg_quality)
    classes = make_classes(num_classes, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _write_all(tmp, classes, params, progress)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_all(root: Path, classes: list[BirdClass], p: dict, progress: bool) -> None:
    per_class = p["train_per_class"] + p["test_per_class"]
    lines = {k: [] for k in ("images", "labels", "split", "boxes")}
    total = len(classes) * per_class
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc="generate", unit="img")
    image_id = 0
    for cls in classes:
        short = cls.folder.split(".", 1)[1]
        (root / "images" / cls.folder).mkdir(parents=True)
        (root / "segmentations" / cls.folder).mkdir(parents=True)
        for j in range(per_class):
            image_id += 1
            rng = np.random.default_rng([p["seed"], image_id])
            image, mask, _ = render_image(rng, cls, p["image_size"], clutter=p["clutter"],
                                       distractors=p["distractors"], body_evidence=p["body_evidence"],
                                       object_scale=tuple(p["object_scale"]))
            name = f"{short}_{image_id:04d}"
            ok1, jpg = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, p["jpeg_quality"]])
            ok2, png = cv2.imencode(".png", mask)
            if not (ok1 and ok2):
                raise RuntimeError(f"cv2.imencode failed for {name}")
            (root / "images" / cls.folder / f"{name}.jpg").write_bytes(jpg.tobytes())
            (root / "segmentations" / cls.folder / f"{name}.png").write_bytes(png.tobytes())
            x, y, w, h = cv2.boundingRect((mask > 0).astype(np.uint8))
            is_train = 1 if j < p["train_per_class"] else 0
            lines["images"].append(f"{image_id} {cls.folder}/{name}.jpg")
            lines["labels"].append(f"{image_id} {cls.index + 1}")
            lines["split"].append(f"{image_id} {is_train}")
            lines["boxes"].append(f"{image_id} {float(x)} {float(y)} {float(w)} {float(h)}")
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    files = {"images.txt": "images", "image_class_labels.txt": "labels",
             "train_test_split.txt": "split", "bounding_boxes.txt": "boxes"}
    for fname, key in files.items():
        (root / fname).write_text("\n".join(lines[key]) + "\n", encoding="utf-8")
    (root / "classes.txt").write_text("".join(f"{c.index + 1} {c.folder}\n" for c in classes), encoding="utf-8")
    atomic_write_json(root / "generator.json", {**p, "classes": [asdict(c) for c in classes]})


def read_generator_params(root) -> dict | None:
    """The arguments stored in ``root/generator.json`` (without the class list), or None."""
    path = Path(root) / "generator.json"
    if not path.is_file():
        return None
    params = json.loads(path.read_text(encoding="utf-8"))
    params.pop("classes", None)
    return params


def get_args_parser() -> argparse.ArgumentParser:
    from utils.config import HelpFormatter

    parser = argparse.ArgumentParser(prog="python -m utils.data.generate", formatter_class=HelpFormatter,
                                     description="Generate a fine-grained 'birds' dataset in the CUB-200-2011 layout.")
    parser.add_argument("--out", required=True, help="output folder (created; must not exist unless --overwrite)")
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--train-per-class", type=int, default=60)
    parser.add_argument("--test-per-class", type=int, default=25)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (square images)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clutter", type=float, default=0.5, help="0..1 background texture and shapes")
    parser.add_argument("--distractors", type=float, default=0.6, help="mean number of headless bodies")
    parser.add_argument("--body-evidence", type=float, default=1.0,
                        help="probability that a bird's body wears its class colour")
    parser.add_argument("--object-scale", type=float, nargs=2, default=(0.4, 0.9), metavar=("LO", "HI"),
                        help="bird length as a fraction of the image side")
    parser.add_argument("--jpeg-quality", type=int, default=95)
    parser.add_argument("--overwrite", action="store_true")
    return parser


def main(args) -> Path:
    out = generate_dataset(args.out, num_classes=args.classes, train_per_class=args.train_per_class,
                           test_per_class=args.test_per_class, image_size=args.size, seed=args.seed,
                           clutter=args.clutter, distractors=args.distractors, body_evidence=args.body_evidence,
                           object_scale=tuple(args.object_scale), jpeg_quality=args.jpeg_quality,
                           overwrite=args.overwrite, progress=True)
    print(f"wrote {out}")
    return out


def cli(argv=None) -> Path:
    """``python -m utils.data.generate``: an existing folder without ``--overwrite`` or impossible
    settings end with one ``error:`` line and exit status 2."""
    import sys

    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        return main(args)
    except (ValueError, FileExistsError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    cli()
