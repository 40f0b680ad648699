"""Builders of tiny hand-made dataset trees (one per layout of utils.data.layouts), for any test.

Each builder writes a few small images and their annotation files under ``root`` and returns
``root``. The module constants give the exact annotations written, so tests can check the
readers against numbers worked out by hand. Images are split in a dark left half and a bright
right half, so a horizontal flip is visible in any pixel row.

:func:`evaluate_in_memory` scores maps held in a dict, as a test step feeds the evaluator.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# CUB: (id, relpath, class 1-based, is_train, (x, y, w, h)); images are CUB_SIZE = (w, h)
CUB_SIZE = (32, 24)
CUB_CLASSES = ["001.Red_bird", "002.Blue_bird"]
CUB_IMAGES = [
    (1, "001.Red_bird/Red_0001.jpg", 1, 1, (4.0, 6.0, 10.0, 8.0)),
    (2, "001.Red_bird/Red_0002.jpg", 1, 0, (0.5, 1.5, 20.0, 12.0)),
    (3, "002.Blue_bird/Blue_0001.jpg", 2, 1, (10.0, 2.0, 21.0, 21.0)),
    (4, "002.Blue_bird/Blue_0002.jpg", 2, 0, (2.0, 3.0, 30.0, 20.0)),
]

# ILSVRC: sorted wnids -> class 0, 1
ILSVRC_WNIDS = ["n01000001", "n02000002"]
ILSVRC_TRAIN = {  # wnid -> [(file name, (w, h))]
    "n01000001": [("n01000001_1.JPEG", (40, 30)), ("n01000001_2.JPEG", (36, 28))],
    "n02000002": [("n02000002_1.JPEG", (30, 40))],
}
# val: file name, label, (w, h), objects [(wnid, (xmin, ymin, xmax, ymax))]
ILSVRC_VAL = [
    ("ILSVRC2012_val_00000001.JPEG", 0, (48, 32),
     [("n01000001", (2, 3, 20, 30)), ("n02000002", (10, 10, 40, 20)), ("n01000001", (25, 1, 47, 31))]),
    ("ILSVRC2012_val_00000002.JPEG", 1, (40, 40), [("n02000002", (5, 6, 35, 38))]),
]

# metadata (Choe et al.): split -> [(image_id, label, (w, h), boxes or None)]
META_SPLITS = {
    "train": [("birds/a_0001.png", 0, (32, 24), None), ("birds/b_0001.png", 1, (24, 32), None)],
    "val": [("birds/a_0002.png", 0, (32, 24), [(1, 2, 30, 20)])],
    "test": [("birds/a_0003.png", 0, (32, 24), [(0, 0, 10, 10), (12, 4, 31, 23)]),
             ("birds/b_0002.png", 1, (24, 32), [(3, 5, 20, 30)])],
}

# OpenImages30k (Choe et al.'s format): split -> [(image_id, label, (w, h), instance boxes, ignore box)];
# masks are written by box_mask at the image's size, an ignore box None = empty ignore field
OPENIMAGES_SPLITS = {
    "train": [("train/0a/t_0001.jpg", 0, (8, 6), None, None), ("train/1b/t_0002.jpg", 1, (6, 8), None, None)],
    "val": [("val/0a/v_0001.jpg", 0, (8, 6), [(1, 1, 4, 4), (5, 0, 8, 3)], (0, 3, 8, 6)),
            ("val/1b/v_0002.jpg", 1, (6, 8), [(0, 0, 6, 2)], None)],
}


def write_image(path: Path, size: tuple[int, int]) -> None:
    """RGB image of size (w, h): left half (20, 40, 60), right half (220, 200, 180)."""
    w, h = size
    array = np.empty((h, w, 3), np.uint8)
    array[:, : w // 2] = (20, 40, 60)
    array[:, w // 2:] = (220, 200, 180)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def box_mask(size: tuple[int, int], box_xyxy) -> np.ndarray:
    """uint8 HxW mask, 255 on the pixels [round(y0), round(y1)) x [round(x0), round(x1))."""
    w, h = size
    mask = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = (int(round(v)) for v in box_xyxy)
    mask[y0:y1, x0:x1] = 255
    return mask


def make_tiny_cub(root, *, images=CUB_IMAGES, size=CUB_SIZE, with_segmentations=True,
                  with_classes=True) -> Path:
    """CUB-200-2011 layout: 4 images of 2 classes (2 train, 2 test), 32x24 px, with segmentations."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": [],
             "bounding_boxes.txt": []}
    for image_id, rel, cls, is_train, (x, y, w, h) in images:
        write_image(root / "images" / rel, size)
        lines["images.txt"].append(f"{image_id} {rel}")
        lines["image_class_labels.txt"].append(f"{image_id} {cls}")
        lines["train_test_split.txt"].append(f"{image_id} {is_train}")
        lines["bounding_boxes.txt"].append(f"{image_id} {x} {y} {w} {h}")
        if with_segmentations:
            seg = root / "segmentations" / (rel.rsplit(".", 1)[0] + ".png")
            seg.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(box_mask(size, (x, y, x + w, y + h))).save(seg)
    if with_classes:
        lines["classes.txt"] = [f"{i} {name}" for i, name in enumerate(CUB_CLASSES, 1)]
    for name, content in lines.items():
        (root / name).write_text("\n".join(content) + "\n")
    return root


def voc_xml(file_name: str, size: tuple[int, int], objects) -> str:
    objs = "".join(
        f"<object><name>{wnid}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for wnid, b in objects)
    return (f"<annotation><filename>{file_name.rsplit('.', 1)[0]}</filename><size><width>{size[0]}"
            f"</width><height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>\n")


def make_tiny_ilsvrc(root, *, with_train=True, train=None) -> Path:
    """ILSVRC layout: 2 wnids, 3 train images (``train``: {wnid: [(file name, (w, h))]} instead),
    2 val images (val 1: two boxes of its class, one other)."""
    root = Path(root)
    if with_train:
        for wnid, files in (ILSVRC_TRAIN if train is None else train).items():
            for name, size in files:
                write_image(root / "train" / wnid / name, size)
    else:
        root.mkdir(parents=True, exist_ok=True)
        (root / "wnids.txt").write_text("\n".join(reversed(ILSVRC_WNIDS)) + "\n")  # order must not matter
    (root / "box").mkdir(parents=True, exist_ok=True)
    for name, _, size, objects in ILSVRC_VAL:
        write_image(root / "val" / name, size)
        (root / "box" / (name.rsplit(".", 1)[0] + ".xml")).write_text(voc_xml(name, size, objects))
    (root / "val.txt").write_text("".join(f"{n} {lab}\n" for n, lab, _, _ in ILSVRC_VAL))
    return root


def make_tiny_metadata(root, *, splits=None) -> Path:
    """Choe et al. metadata layout under root/metadata/<split>/, images at root/<image_id>."""
    root = Path(root)
    splits = META_SPLITS if splits is None else splits
    for split, items in splits.items():
        folder = root / "metadata" / split
        folder.mkdir(parents=True, exist_ok=True)
        ids, labels, sizes, locs = [], [], [], []
        for image_id, label, size, boxes in items:
            write_image(root / image_id, size)
            ids.append(image_id)
            labels.append(f"{image_id},{label}")
            sizes.append(f"{image_id},{size[0]},{size[1]}")
            locs += [f"{image_id},{b[0]},{b[1]},{b[2]},{b[3]}" for b in boxes or ()]
        (folder / "image_ids.txt").write_text("\n".join(ids) + "\n")
        (folder / "class_labels.txt").write_text("\n".join(labels) + "\n")
        (folder / "image_sizes.txt").write_text("\n".join(sizes) + "\n")
        if any(b is not None for *_, b in items):
            (folder / "localization.txt").write_text("\n".join(locs) + "\n")
    return root


def write_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(mask, np.uint8)).save(path)


def make_tiny_openimages(root, *, splits=None) -> Path:
    """OpenImages30k layout (Choe et al.): metadata under root/metadata/<split>/, images and masks at
    root/<path>. Entries as :data:`OPENIMAGES_SPLITS`; instance masks and ignore masks may also be
    given as uint8 arrays instead of boxes (then at their own size). No image_sizes.txt."""
    root = Path(root)
    splits = OPENIMAGES_SPLITS if splits is None else splits
    for split, items in splits.items():
        folder = root / "metadata" / split
        folder.mkdir(parents=True, exist_ok=True)
        ids, labels, loc = [], [], []
        for image_id, label, size, instances, ignore in items:
            write_image(root / image_id, size)
            ids.append(image_id)
            labels.append(f"{image_id},{label}")
            stem = image_id.rsplit(".", 1)[0]
            ignore_rel = ""
            if ignore is not None:
                ignore_rel = f"{stem}_ignore.png"
                write_mask(root / ignore_rel, box_mask(size, ignore) if len(np.shape(ignore)) == 1 else ignore)
            for k, inst in enumerate(instances or ()):
                rel = f"{stem}_m{k}.png"
                write_mask(root / rel, box_mask(size, inst) if len(np.shape(inst)) == 1 else inst)
                loc.append(f"{image_id},{rel},{ignore_rel if k == 0 else ''}")
        (folder / "image_ids.txt").write_text("\n".join(ids) + "\n")
        (folder / "class_labels.txt").write_text("\n".join(labels) + "\n")
        if loc:
            (folder / "localization.txt").write_text("\n".join(loc) + "\n")
    return root


def evaluate_in_memory(records, maps: dict, protocol: str, *, input_size: int = 224, resize_size: int = 256,
                       flags=None, **options) -> dict:
    """The results of ``maps`` (image id -> 2-D map) through the streaming evaluator, fed in the records'
    order as a test step's inference consumer feeds it (``options``: those of the evaluator)."""
    from utils.evaluation.evaluator import LocalizationEvaluator
    from utils.evaluation.protocol import get_protocol

    with LocalizationEvaluator(records, get_protocol(protocol, input_size, resize_size), flags=flags,
                               **options) as evaluator:
        for record in records:
            evaluator.accumulate(record.image_id, maps[record.image_id])
        return evaluator.compute().metrics


def edit_line(path, lineno, new):
    """Replace line ``lineno`` (1-based) of a text file with ``new``."""
    lines = Path(path).read_text().splitlines()
    lines[lineno - 1] = new
    Path(path).write_text("\n".join(lines) + "\n")
