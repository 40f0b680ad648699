"""A generated fine-grained "birds" dataset in the CUB-200-2011 layout, for demos and tests.

    python -m utils.data.generate --out dataset/synth_birds --families 6 --species 3 --train-per-class 40 \
        --test-per-class 17 --size 64 --seed 0
    python -m utils.data.generate --out dataset/flat_birds --classes 6 --size 64 --seed 0   # one species per family

Every image shows one bird (body ellipse, wing, tail, head, eye, beak, crest) on a cluttered
background. Classes come in **families of species**, as in CUB-200-2011 (``--families F --species
S``: F x S classes). A family shares the large parts: body colour (saturated hues spread around the
colour circle), wing pattern and tail shape. The species of a family differ only in a small part,
the head (head colour, crest shape and colour, beak colour), and the S head designs are one pool
shared by every family, so the head tells a bird's species within its family, never its family: a
classifier has to read the body for the family and the head for the species, and the class maps of
one family's species share the body. Without ``--families`` every class is a family of its own with
a head design of its own (``--classes C``). Size, aspect, pose (rotation, facing left/right) and
position vary at random; ``body_evidence`` is the probability that a bird wears its family's body
colour rather than a random one (wing pattern and tail shape are always the family's). The
background holds smooth coloured noise, random shapes and distractors: headless bird bodies of
random colour, pattern and tail (object-like, but without the head). Segmentation masks cover the
bird only.

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
WING_PATTERNS = ("Plain", "Barred", "Spotted")       # a family's wing
TAIL_SHAPES = ("Wedge", "Forked", "Fan")              # a family's tail
GENERATOR_VERSION = 2
SUPERSAMPLE = 2  # drawing resolution factor (anti-aliased images; masks thresholded at 50 %)
MAX_CLASSES = 200


@dataclass(frozen=True)
class HeadDesign:
    """A species' deciding part: head colour, crest shape and colour (None when bald), beak colour."""
    head: str
    crest_shape: str
    crest: str | None
    beak: str

    @property
    def name(self) -> str:
        crest = "Bald" if self.crest_shape == "Bald" else f"{self.crest_shape}_{self.crest}_crested"
        return f"{crest}_{self.beak}_billed_{self.head}_headed"


@dataclass(frozen=True)
class BirdClass:
    """One class: its family's large parts (body colour, wing pattern, tail shape) and its own head."""
    index: int                      # 0-based class index
    folder: str                     # "001.F1_Barred_Forked_Spiked_Red_crested_Blue_billed_Yellow_headed"
    family: int                     # 0-based family index
    species: int                    # 0-based index of the species within its family
    head: str
    crest_shape: str
    crest: str | None               # None for a bald head
    beak: str
    body_rgb: tuple[int, int, int]  # the family's body colour, worn by a fraction ``body_evidence`` of birds
    wing_pattern: str               # the family's
    tail_shape: str                 # the family's


def all_head_designs() -> list[HeadDesign]:
    """Every head design: a crest never has the head's colour (it would not show); a bald head has no crest."""
    designs = [HeadDesign(h, s, c, b) for h, s, c, b in itertools.product(HEAD_COLOURS, CREST_SHAPES[:-1],
                                                                          CREST_COLOURS, BEAK_COLOURS) if c != h]
    designs += [HeadDesign(h, "Bald", None, b) for h, b in itertools.product(HEAD_COLOURS, BEAK_COLOURS)]
    return designs


def check_class_counts(num_classes: int, families: int | None) -> tuple[int, int]:
    """(families, species per family) for valid counts, else a one-line ``ValueError``."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"the number of classes must be in 1..{MAX_CLASSES}, got {num_classes}")
    if families is None:                      # every class a family of its own
        return num_classes, 1
    if not 1 <= families <= num_classes or num_classes % families:
        raise ValueError(f"{num_classes} classes cannot be split into {families} families of equal size")
    species = num_classes // families
    if species > len(HEAD_COLOURS):
        raise ValueError(f"at most {len(HEAD_COLOURS)} species per family (one head colour each), got {species}")
    return families, species


def _pick_head_designs(rng, count: int) -> list[HeadDesign]:
    """``count`` distinct designs, in a random order, whose head colours (10), then crest shapes,
    repeat as little as possible."""
    designs = all_head_designs()
    order = [designs[i] for i in rng.permutation(len(designs))]
    heads, crests = dict.fromkeys(HEAD_COLOURS, 0), dict.fromkeys(CREST_SHAPES, 0)
    picked: list[HeadDesign] = []
    taken: set[HeadDesign] = set()
    for _ in range(count):
        best = min((d for d in order if d not in taken), key=lambda d: (heads[d.head], crests[d.crest_shape]))
        picked.append(best)
        taken.add(best)
        heads[best.head] += 1
        crests[best.crest_shape] += 1
    return picked


def make_classes(num_classes: int, seed: int, *, families: int | None = None) -> list[BirdClass]:
    """The classes of a dataset, deterministic by ``seed``: ``families`` families of
    ``num_classes // families`` species (default: every class a family of its own).

    A family takes an evenly spread body hue (in a random order) and a wing pattern and tail shape
    (the 9 combinations cycled, so up to 9 families differ there too). With families, the species
    heads come from one pool of as many head designs as a family has species (head colours all
    different, crests as varied as possible), each family using the whole pool in its own order:
    the head tells a bird's species within its family, never its family. Without ``families`` every
    class is a family of its own with a head design of its own (head colours spread, every design
    distinct). Classes are numbered family by family."""
    num_families, species = check_class_counts(num_classes, families)
    rng = np.random.default_rng([seed, 0x5EED])
    hues = (np.arange(num_families) / num_families + rng.random()) % 1.0
    hues = hues[rng.permutation(num_families)]
    looks = list(itertools.product(WING_PATTERNS, TAIL_SHAPES))
    looks = [looks[i] for i in rng.permutation(len(looks))]
    pool = _pick_head_designs(rng, num_classes if families is None else species)
    classes = []
    for f in range(num_families):
        body = _hsv_rgb(hues[f], 0.8, 0.85)
        wing, tail = looks[f % len(looks)]
        designs = [pool[f]] if families is None else [pool[i] for i in rng.permutation(species)]
        for j, design in enumerate(designs):
            k = len(classes)
            name = design.name if families is None else f"F{f + 1}_{wing}_{tail}_{design.name}"
            classes.append(BirdClass(k, f"{k + 1:03d}.{name}", f, j, design.head, design.crest_shape, design.crest,
                                     design.beak, body, wing, tail))
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


def _tail(rng, shape: str) -> np.ndarray:
    """The tail polygon behind the body (bird frame: the body ends at x = -0.8)."""
    length, width = rng.uniform(0.45, 0.75), rng.uniform(0.18, 0.32)
    x = -0.8 - length
    if shape == "Forked":   # two prongs with a deep notch
        return np.array([[-0.8, -0.08], [x, -width * 1.2], [-0.8 - length * 0.45, 0.0], [x, width * 1.2], [-0.8, 0.08]])
    if shape == "Fan":      # a rounded fan
        return _ellipse(-0.8 - length * 0.55, 0.0, length * 0.6, width * 1.4, 0, n=24)
    return np.array([[-0.8, 0.0], [x, -width], [-0.8 - length * 0.85, 0.0], [x, width]])   # "Wedge"


def _wing_marks(rng, pattern: str, aspect: float, wing_rgb) -> list:
    """The wing pattern's marks (bars across the wing, or spots), darker than the wing."""
    dark = tuple(int(v * 0.45) for v in wing_rgb)
    marks = []
    if pattern == "Barred":
        for x in (-0.55, -0.25, 0.05, 0.35):
            marks.append((np.array([[x - 0.06, -aspect * 0.45], [x + 0.06, -aspect * 0.45],
                                    [x + 0.06, aspect * 0.35], [x - 0.06, aspect * 0.35]]), dark))
    elif pattern == "Spotted":
        for x, y in ((-0.55, -0.1), (-0.3, 0.12), (-0.1, -0.18), (0.15, 0.05), (0.4, -0.12), (-0.05, 0.3 * aspect)):
            marks.append((_ellipse(x, y * aspect * 1.6, 0.075, 0.075, n=12), dark))
    return marks


def bird_polygons(rng, cls: BirdClass | None, body_rgb, *, with_head=True, wing_pattern: str | None = None,
                  tail_shape: str | None = None):
    """Parts of one bird in its own frame: (list of (polygon Nx2, RGB colour) back to front,
    head centre (2,) or None). The wing pattern and tail shape are the class's family's, or the
    given ones (a distractor body has no class)."""
    wing_pattern = wing_pattern or (cls.wing_pattern if cls is not None else "Plain")
    tail_shape = tail_shape or (cls.tail_shape if cls is not None else "Wedge")
    aspect = rng.uniform(0.42, 0.62)                       # body height / length
    parts = [(_tail(rng, tail_shape), _jitter(rng, np.asarray(body_rgb) * 0.8))]
    parts.append((_ellipse(0, 0, 1.0, aspect, 0), body_rgb))
    wing_rgb = _jitter(rng, np.asarray(body_rgb) * rng.uniform(0.55, 0.8))
    wing_rot = rng.uniform(-12, 8)
    parts.append((_ellipse(-0.15, -0.05, 0.62, aspect * 0.55, wing_rot), wing_rgb))
    parts.extend(_wing_marks(rng, wing_pattern, aspect, wing_rgb))
    if not with_head:
        return parts, None
    hr = rng.uniform(0.375, 0.475)                         # head radius
    hx, hy = 0.88 + rng.uniform(-0.05, 0.05), -aspect * rng.uniform(0.55, 0.9)
    head_rgb = _jitter(rng, PART_COLOURS[cls.head], 10)
    if cls.crest_shape != "Bald":
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
        pattern = WING_PATTERNS[int(rng.integers(len(WING_PATTERNS)))]
        tail = TAIL_SHAPES[int(rng.integers(len(TAIL_SHAPES)))]
        for pts, col in bird_polygons(rng, None, body_rgb, with_head=False, wing_pattern=pattern,
                                      tail_shape=tail)[0]:
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
                     image_size: int, seed: int, families: int | None = None,
                     clutter: float = 0.5, distractors: float = 0.6,
                     body_evidence: float = 1.0, object_scale: tuple[float, float] = (0.4, 0.9),
                     jpeg_quality: int = 95, overwrite: bool = False, progress: bool = False) -> Path:
    """Write the dataset into ``out`` (CUB-200-2011 layout, see the module docstring); return ``out``.

    Args:
        families: split the ``num_classes`` classes into this many families of equal size (species
            of a family share the body, wing pattern and tail, and differ in the head); None: every
            class is a family of its own.
        clutter: 0..1, amount of background texture and random shapes (Poisson mean 8 * clutter).
        distractors: Poisson mean of headless bird bodies in the background.
        body_evidence: probability that a bird's body wears its family colour (else a random one).
        object_scale: range of the bird's length (tail to beak) as a fraction of the image side.
        overwrite: replace an existing ``out``; otherwise an existing non-empty ``out`` is an error.

    Impossible settings raise a one-line ``ValueError`` before anything is written.
    """
    out = Path(out)
    check_class_counts(num_classes, families)
    if train_per_class < 0 or test_per_class < 0 or train_per_class + test_per_class < 1:
        raise ValueError(f"{out}: need at least 1 image per class (got {train_per_class} train + "
                         f"{test_per_class} test per class)")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    lo, hi = object_scale
    if not 0.1 <= lo <= hi <= 1.0:
        raise ValueError(f"object_scale must satisfy 0.1 <= lo <= hi <= 1, got {object_scale}")
    if not 0.0 <= clutter <= 1.0 or distractors < 0 or not 0.0 <= body_evidence <= 1.0:
        raise ValueError(f"clutter and body_evidence must be in [0, 1] and distractors >= 0, got {clutter}, "
                         f"{body_evidence}, {distractors}")
    if not 0 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 0..100, got {jpeg_quality}")
    from utils.paths import check_output_path

    check_output_path(out, "--out")  # not a file, under no file, writable
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty: choose another folder, or pass "
                              "overwrite=True / --overwrite to replace it")
    params = dict(version=GENERATOR_VERSION, num_classes=num_classes, families=families,
                  train_per_class=train_per_class,
                  test_per_class=test_per_class, image_size=image_size, seed=seed, clutter=clutter,
                  distractors=distractors, body_evidence=body_evidence, object_scale=[lo, hi],
                  jpeg_quality=jpeg_quality)
    classes = make_classes(num_classes, seed, families=families)
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
    from utils.config import HelpFormatter, OptionParser
    from utils.ranges import Range, fraction, non_negative_float, non_negative_int, positive_int, probability

    parser = OptionParser(prog="python -m utils.data.generate", formatter_class=HelpFormatter,
                          description="Generate a fine-grained 'birds' dataset in the CUB-200-2011 layout.")
    parser.add_argument("--out", required=True, help="output folder (created; must not exist unless --overwrite)")
    parser.add_argument("--classes", type=Range(int, 1, MAX_CLASSES), default=None,
                        help=f"number of classes, 1..{MAX_CLASSES} (default 6, or families x species)")
    parser.add_argument("--families", type=positive_int, default=None,
                        help="split the classes into this many families (default: one family per class)")
    parser.add_argument("--species", type=positive_int, default=None,
                        help="species per family (with --families: classes = families x species)")
    parser.add_argument("--train-per-class", type=non_negative_int, default=60)
    parser.add_argument("--test-per-class", type=non_negative_int, default=25)
    parser.add_argument("--size", type=Range(int, 16), default=64, help="image side in pixels (square images)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--clutter", type=probability, default=0.5, help="0..1 background texture and shapes")
    parser.add_argument("--distractors", type=non_negative_float, default=0.6, help="mean number of headless bodies")
    parser.add_argument("--body-evidence", type=probability, default=1.0,
                        help="probability that a bird's body wears its family's colour")
    parser.add_argument("--object-scale", type=fraction, nargs=2, default=(0.4, 0.9), metavar=("LO", "HI"),
                        help="bird length as a fraction of the image side")
    parser.add_argument("--jpeg-quality", type=Range(int, 0, 100), default=95)
    parser.add_argument("--overwrite", action="store_true")
    return parser


def class_counts(args) -> tuple[int, int | None]:
    """(number of classes, families or None) of the command line, or a one-line ``ValueError``."""
    if args.species is not None and args.families is None:
        raise ValueError("--species needs --families (classes = families x species)")
    if args.families is None:
        return (6 if args.classes is None else args.classes), None
    if args.families < 1 or (args.species is not None and args.species < 1):
        raise ValueError(f"--families and --species must be >= 1, got {args.families} and {args.species}")
    if args.species is None:
        if args.classes is None:
            raise ValueError("--families needs --species or --classes")
        return args.classes, args.families
    classes = args.families * args.species
    if args.classes is not None and args.classes != classes:
        raise ValueError(f"--classes {args.classes} contradicts --families {args.families} x --species "
                         f"{args.species} = {classes}")
    return classes, args.families


def main(args) -> Path:
    num_classes, families = class_counts(args)
    out = generate_dataset(args.out, num_classes=num_classes, families=families,
                           train_per_class=args.train_per_class,
                           test_per_class=args.test_per_class, image_size=args.size, seed=args.seed,
                           clutter=args.clutter, distractors=args.distractors, body_evidence=args.body_evidence,
                           object_scale=tuple(args.object_scale), jpeg_quality=args.jpeg_quality,
                           overwrite=args.overwrite, progress=True)
    print(f"wrote {out}")
    return out


def cli(argv=None) -> Path:
    """``python -m utils.data.generate``: an existing folder without ``--overwrite``, an ``--out``
    that cannot be written, impossible settings or an option out of range end with one ``error:``
    line and exit status 2."""
    import sys

    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        return main(args)
    except (ValueError, FileExistsError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # the dataset is written into a temporary folder, removed on the way out
        print(f"error: {args.out}: interrupted (Ctrl-C): nothing was written there; the same command generates "
              "the dataset again", file=sys.stderr, flush=True)
        raise SystemExit(130) from None


if __name__ == "__main__":
    cli()
