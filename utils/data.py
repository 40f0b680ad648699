"""Dataset readers, the WSOL dataset and the evaluation geometry shared by every stage.

Three on-disk layouts are read by :func:`load_records`; every one gives :class:`Record` objects
whose boxes are ``x0, y0, x1, y1`` in ORIGINAL image pixels (float32, shape (N, 4)).

``"cub"``: CUB-200-2011 as distributed (``root`` = the ``CUB_200_2011`` folder)::

    images.txt              "<id> <relpath>"              relpath under images/, e.g. 001.Black.../x.jpg
    image_class_labels.txt  "<id> <class>"                class 1-based (label = class - 1)
    train_test_split.txt    "<id> <1|0>"                  1 = train, 0 = test
    bounding_boxes.txt      "<id> <x> <y> <w> <h>"        floats
    classes.txt             "<class> <name>"              optional; when present it fixes the class count
    images/<relpath>
    segmentations/<relpath with .png>                     optional GT masks (mask_path None when absent)

  Boxes: x0 = x, y0 = y, x1 = x + w, y1 = y + h, as in Choe et al.'s CUB metadata (their IoU then
  counts edges inclusively, +1 on width and height). Image sizes come from the image headers
  (PIL lazy open, no decode). ``image_id`` = relpath. Splits: "train", "test".

``"ilsvrc"``: ILSVRC2012 (``root`` holds)::

    train/<wnid>/*.JPEG     class index = position of <wnid> in the SORTED list of wnids
    wnids.txt               one wnid per line; used only when train/ is absent (sorted before use)
    val/*.JPEG
    val.txt                 "<file name> <class index>"  (same sorted-wnid indices)
    box/<val file stem>.xml Pascal-VOC, one per val image, with all its objects

  Val boxes: every ``<object>`` whose ``<name>`` is the labelled class's wnid, xmin..ymax as given
  (GT-known takes the best of them); other classes' objects are ignored. Val image size comes from
  the XML ``<size>``; train sizes from the image headers. Train records have boxes of shape (0, 4).
  ``image_id`` = "train/<wnid>/<file>" or "val/<file>" (the ids of Choe et al.'s metadata).
  Splits: "train", "val".

``"metadata"``: Choe et al. (CVPR 2020, wsolevaluation) metadata, folder ``metadata_root`` (default
``root/metadata``) with one sub-folder per split (e.g. "train", "val", "test")::

    <split>/image_ids.txt     "<image_id>"                   images at root/<image_id>
    <split>/class_labels.txt  "<image_id>,<label>"           0-based
    <split>/image_sizes.txt   "<image_id>,<w>,<h>"
    <split>/localization.txt  "<image_id>,<x0>,<y0>,<x1>,<y1>", several lines per image allowed;
                              optional for the "train" split only (then boxes have shape (0, 4))
    class_names.txt           optional, one name per line (line i = class i); fixes the class count
                              (without it: 1 + the largest label found in any split folder)

  Boxes as given (x0, y0, x1, y1; Choe's IoU counts edges inclusively). This layout carries no GT
  masks (mask_path is None): PxAP needs the "cub" layout. Its "val" splits (CUBV2 / ImageNetV2)
  are the fully supervised held-out sets on which thresholds are chosen.

``exclude_ids`` leaves images out: an entry matches an image_id or its file name (or, for "cub",
the numeric id of images.txt), e.g.
``("ILSVRC2012_val_00033202.JPEG",)``, the val image whose label is known to be wrong (SPOL excludes it).

Every bad input raises :class:`utils.errors.DataError` naming the file (and the 1-based line):
missing root or file, malformed line, unknown/duplicate/inconsistent ids, label out of range,
box outside the image (beyond ``box_tolerance`` = 1 px), empty split, missing or bad XML,
unreadable image (at load time with ``check_images=True``, otherwise in ``WSOLDataset``).
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from utils.errors import DataError

LAYOUTS = ("cub", "ilsvrc", "metadata")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp")
BOX_TOLERANCE = 1.0  # px a box may stick out of the image (float CUB boxes, 1-based VOC corners)


@dataclass(frozen=True, eq=False)
class Record:
    """One image. ``boxes``: float32 (N, 4) x0, y0, x1, y1 in original pixels (N may be 0)."""

    image_id: str
    path: str
    label: int
    boxes: np.ndarray
    size: tuple[int, int]  # (width, height)
    mask_path: str | None


class RecordList(list):
    """A plain list of records that also remembers the dataset's class count and names."""

    def __init__(self, records: Iterable[Record], class_names: Sequence[str]):
        super().__init__(records)
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)


def num_classes(records) -> int:
    """Number of classes of the dataset the records come from.

    Exact for the list returned by :func:`load_records`; for any other sequence (e.g. a slice)
    it is ``max(label) + 1``.
    """
    n = getattr(records, "num_classes", None)
    if n is not None:
        return int(n)
    if len(records) == 0:
        raise ValueError("num_classes: no records")
    return max(int(r.label) for r in records) + 1


# ----------------------------------------------------------------------------- text files
def _require(path: Path, what: str, layout: str, *, folder: bool = False) -> Path:
    ok = path.is_dir() if folder else path.is_file()
    if not ok:
        kind = "folder" if folder else "file"
        raise DataError.at(path, msg=f"missing {what} {kind} (required by the '{layout}' layout)")
    return path


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped line) for every non-blank line."""
    try:
        with open(path, encoding="utf-8-sig") as f:  # tolerate a BOM
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if line:
                    yield lineno, line
    except UnicodeDecodeError as e:
        raise DataError.at(path, msg=f"not a UTF-8 text file ({e})") from None


def _fields(path: Path, lineno: int, line: str, n: int, sep: str | None, form: str,
            rest: bool = False) -> list[str]:
    parts = line.split(sep) if sep is None else [p.strip() for p in line.split(sep)]
    if rest and len(parts) > n:  # the last field may hold spaces ("<id> <relpath with spaces>")
        parts = parts[:n - 1] + [line.split(None, n - 1)[-1]]
    if len(parts) != n:
        raise DataError.at(path, lineno, f"expected {n} fields '{form}', got {len(parts)}: {line!r}")
    return parts


def _int(path: Path, lineno: int, text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError.at(path, lineno, f"{what} is not an integer: {text!r}") from None


def _float(path: Path, lineno: int, text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError.at(path, lineno, f"{what} is not a number: {text!r}") from None
    if not np.isfinite(value):
        raise DataError.at(path, lineno, f"{what} is not finite: {text!r}")
    return value


def _check_box(box, size, path, lineno, tolerance: float) -> None:
    x0, y0, x1, y1 = box
    w, h = size
    if x1 < x0 or y1 < y0:
        raise DataError.at(path, lineno, f"box {list(box)} has x1 < x0 or y1 < y0")
    if x0 < -tolerance or y0 < -tolerance or x1 > w + tolerance or y1 > h + tolerance:
        raise DataError.at(path, lineno, f"box (x0,y0,x1,y1)={list(box)} lies outside the {w}x{h} image "
                                         f"(tolerance {tolerance:g} px)")


def _check_label(label: int, n: int, path, lineno, names_from: str) -> None:
    if label < 0 or label >= n:
        raise DataError.at(path, lineno, f"label {label} out of range [0, {n}) ({names_from})")


# ----------------------------------------------------------------------------- images
def _image_size(path: str) -> tuple[int, int]:
    """(width, height) from the image header only (PIL opens lazily; nothing is decoded)."""
    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except FileNotFoundError:
        raise DataError.at(path, msg="image file not found") from None
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError...
        raise DataError.at(path, msg=f"cannot read image header: {e}") from None


def _image_sizes(paths: list[str]) -> list[tuple[int, int]]:
    # Header reads are I/O bound (a stat, an open, a few KB): threads overlap the waits.
    # Measured on warm local files: about 30-130 us per image serially (CUB's 12k images in
    # well under 2 s); threads only pay off for ImageNet-sized lists on slow or cold storage.
    if len(paths) < 20000:
        return [_image_size(p) for p in paths]
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(_image_size, paths, chunksize=256))


def _verify_image(record: Record) -> None:
    try:
        with Image.open(record.path) as im:
            im.load()
            size = im.size
    except FileNotFoundError:
        raise DataError.at(record.path, msg="image file not found") from None
    except Exception as e:
        raise DataError.at(record.path, msg=f"unreadable or corrupt image: {e}") from None
    if tuple(size) != tuple(record.size):
        raise DataError.at(record.path, msg=f"image is {size[0]}x{size[1]} but the annotation "
                                            f"says {record.size[0]}x{record.size[1]}")


def _check_exist(paths: Sequence[str], listing_file: Path, lines: Sequence[int]) -> None:
    """Every path exists (one directory listing per folder instead of one stat per file)."""
    listings: dict[str, set[str]] = {}
    for path, lineno in zip(paths, lines):
        folder, name = os.path.split(path)
        if folder not in listings:
            try:
                listings[folder] = set(os.listdir(folder))
            except OSError:
                listings[folder] = set()
        if name not in listings[folder]:
            raise DataError.at(listing_file, lineno, f"image {path} not found")


def _excluded(image_id: str, exclude: set[str]) -> bool:
    return image_id in exclude or os.path.basename(image_id) in exclude


# ----------------------------------------------------------------------------- layout: cub
def _cub_class_names(root: Path) -> list[str] | None:
    path = root / "classes.txt"
    if not path.is_file():
        return None
    names: dict[int, str] = {}
    for lineno, line in _lines(path):
        cid, name = _fields(path, lineno, line, 2, None, "<class id> <name>", rest=True)
        cid = _int(path, lineno, cid, "class id")
        if cid in names:
            raise DataError.at(path, lineno, f"class id {cid} listed twice")
        names[cid] = name
    if sorted(names) != list(range(1, len(names) + 1)):
        raise DataError.at(path, msg=f"class ids must be 1..{len(names)} without gaps")
    return [names[i] for i in range(1, len(names) + 1)]


def _cub_table(path: Path, form: str, nfields: int, rest: bool = False) -> dict[str, tuple[int, list[str]]]:
    table: dict[str, tuple[int, list[str]]] = {}
    for lineno, line in _lines(path):
        parts = _fields(path, lineno, line, nfields, None, form, rest)
        if parts[0] in table:
            raise DataError.at(path, lineno, f"image id {parts[0]} listed twice "
                                             f"(first on line {table[parts[0]][0]})")
        table[parts[0]] = (lineno, parts[1:])
    return table


def _load_cub(root: Path, split: str, exclude: set[str], tolerance: float) -> RecordList:
    if split not in ("train", "test"):
        raise ValueError(f"cub layout: split must be 'train' or 'test', got {split!r}")
    files = {key: _require(root / name, what, "cub") for key, name, what in (
        ("images", "images.txt", "image list"),
        ("labels", "image_class_labels.txt", "class label"),
        ("split", "train_test_split.txt", "train/test split"),
        ("boxes", "bounding_boxes.txt", "bounding box"))}
    image_dir = _require(root / "images", "image", "cub", folder=True)
    images = _cub_table(files["images"], "<id> <relpath>", 2, rest=True)
    labels = _cub_table(files["labels"], "<id> <class>", 2)
    splits = _cub_table(files["split"], "<id> <is_train>", 2)
    boxes = _cub_table(files["boxes"], "<id> <x> <y> <w> <h>", 5)
    for key, table in (("labels", labels), ("split", splits), ("boxes", boxes)):
        for image_id, (lineno, _) in table.items():
            if image_id not in images:
                raise DataError.at(files[key], lineno, f"image id {image_id} is not in images.txt")
    names = _cub_class_names(root)
    if names is None:  # no classes.txt: classes are the 1-based ids used anywhere
        n = max((_int(files["labels"], ln, v[0], "class") for ln, v in labels.values()), default=0)
        names = [str(i) for i in range(1, n + 1)]
    names_from = f"{len(names)} classes in classes.txt" if (root / "classes.txt").is_file() \
        else "class ids of image_class_labels.txt"
    seg_dir = root / "segmentations"
    want = 1 if split == "train" else 0
    selected = []
    for image_id, (img_line, (relpath,)) in images.items():
        for key, table in (("labels", labels), ("split", splits), ("boxes", boxes)):
            if image_id not in table:
                raise DataError.at(files[key], msg=f"image id {image_id} (images.txt:{img_line}) "
                                                   f"has no line in {files[key].name}")
        sl, (flag,) = splits[image_id]
        flag = _int(files["split"], sl, flag, "is_train flag")
        if flag not in (0, 1):
            raise DataError.at(files["split"], sl, f"is_train flag must be 0 or 1, got {flag}")
        if flag == want and not (image_id in exclude or _excluded(relpath, exclude)):
            selected.append((image_id, img_line, relpath))
    if not selected:
        raise DataError.at(files["split"], msg=f"no image in split '{split}'")
    paths = [str(image_dir / rel) for _, _, rel in selected]
    _check_exist(paths, files["images"], [ln for _, ln, _ in selected])
    sizes = _image_sizes(paths)
    has_seg = seg_dir.is_dir()
    records = []
    for (image_id, _, relpath), path, size in zip(selected, paths, sizes):
        ll, (cls,) = labels[image_id]
        label = _int(files["labels"], ll, cls, "class") - 1
        _check_label(label, len(names), files["labels"], ll, names_from)
        bl, vals = boxes[image_id]
        x, y, w, h = (_float(files["boxes"], bl, v, name) for v, name in zip(vals, "xywh"))
        box = (x, y, x + w, y + h)
        _check_box(box, size, files["boxes"], bl, tolerance)
        mask = seg_dir / (os.path.splitext(relpath)[0] + ".png") if has_seg else None
        records.append(Record(relpath, path, label, np.asarray([box], np.float32), size,
                              str(mask) if mask is not None else None))
    return RecordList(records, names)


# ----------------------------------------------------------------------------- layout: ilsvrc
def _ilsvrc_wnids(root: Path) -> list[str]:
    train = root / "train"
    if train.is_dir():
        wnids = sorted(e.name for e in os.scandir(train) if e.is_dir())
        if not wnids:
            raise DataError.at(train, msg="no class folder (<wnid>/) in the ILSVRC train folder")
        return wnids
    path = root / "wnids.txt"
    if not path.is_file():
        raise DataError.at(path, msg="missing: the 'ilsvrc' layout needs root/train/<wnid>/ folders "
                                     "or root/wnids.txt to define the class order")
    seen: dict[str, int] = {}
    for lineno, line in _lines(path):
        (wnid,) = _fields(path, lineno, line, 1, None, "<wnid>")
        if wnid in seen:
            raise DataError.at(path, lineno, f"wnid {wnid} listed twice (first on line {seen[wnid]})")
        seen[wnid] = lineno
    if not seen:
        raise DataError.at(path, msg="no wnid listed")
    return sorted(seen)


def _voc_boxes(xml_path: Path, wnid: str, tolerance: float) -> tuple[np.ndarray, tuple[int, int]]:
    try:
        tree = ET.parse(xml_path)
    except FileNotFoundError:
        raise DataError.at(xml_path, msg="missing box XML for this val image "
                                         "(the 'ilsvrc' layout needs root/box/<stem>.xml)") from None
    except ET.ParseError as e:
        line = e.position[0] if getattr(e, "position", None) else None
        raise DataError.at(xml_path, line, f"malformed XML: {e}") from None
    node = tree.getroot()

    def number(elem, tag, what, cast):
        child = elem.find(tag)
        if child is None or child.text is None:
            raise DataError.at(xml_path, msg=f"missing <{tag}> in {what}")
        try:
            return cast(float(child.text.strip()))
        except ValueError:
            raise DataError.at(xml_path, msg=f"<{tag}> of {what} is not a number: {child.text!r}") from None

    size_node = node.find("size")
    if size_node is None:
        raise DataError.at(xml_path, msg="missing <size>")
    size = (number(size_node, "width", "<size>", int), number(size_node, "height", "<size>", int))
    if size[0] <= 0 or size[1] <= 0:
        raise DataError.at(xml_path, msg=f"bad image size {size}")
    boxes, names = [], []
    for k, obj in enumerate(node.findall("object"), 1):
        name = (obj.findtext("name") or "").strip()
        names.append(name)
        if name != wnid:
            continue
        bnd = obj.find("bndbox")
        if bnd is None:
            raise DataError.at(xml_path, msg=f"object {k} ({name}) has no <bndbox>")
        what = f"object {k} <bndbox>"
        box = tuple(number(bnd, t, what, float) for t in ("xmin", "ymin", "xmax", "ymax"))
        try:
            _check_box(box, size, xml_path, None, tolerance)
        except DataError as e:
            raise DataError(f"{e} (object {k})") from None
        boxes.append(box)
    if not boxes:
        raise DataError.at(xml_path, msg=f"no object of the labelled class {wnid} "
                                         f"(objects: {', '.join(names) or 'none'})")
    return np.asarray(boxes, np.float32).reshape(-1, 4), size


def _load_ilsvrc(root: Path, split: str, exclude: set[str], tolerance: float) -> RecordList:
    if split not in ("train", "val"):
        raise ValueError(f"ilsvrc layout: split must be 'train' or 'val', got {split!r}")
    wnids = _ilsvrc_wnids(root)
    records = []
    if split == "train":
        train = _require(root / "train", "training image", "ilsvrc", folder=True)
        items = []
        for label, wnid in enumerate(wnids):
            names = sorted(e.name for e in os.scandir(train / wnid)
                           if e.name.lower().endswith(IMAGE_EXTENSIONS))
            items += [(f"train/{wnid}/{n}", label) for n in names]
        items = [(i, lab) for i, lab in items if not _excluded(i, exclude)]
        if not items:
            raise DataError.at(train, msg="no image in split 'train'")
        paths = [str(root / i) for i, _ in items]
        sizes = _image_sizes(paths)
        empty = np.zeros((0, 4), np.float32)
        records = [Record(i, p, lab, empty, s, None) for (i, lab), p, s in zip(items, paths, sizes)]
    else:
        listing = _require(root / "val.txt", "val label list", "ilsvrc")
        val_dir = _require(root / "val", "val image", "ilsvrc", folder=True)
        box_dir = _require(root / "box", "val box XML", "ilsvrc", folder=True)
        seen: dict[str, int] = {}
        items = []
        for lineno, line in _lines(listing):
            name, label = _fields(listing, lineno, line, 2, None, "<file name> <class index>")
            label = _int(listing, lineno, label, "class index")
            _check_label(label, len(wnids), listing, lineno, f"{len(wnids)} wnids")
            if name in seen:
                raise DataError.at(listing, lineno, f"{name} listed twice (first on line {seen[name]})")
            seen[name] = lineno
            if not _excluded(f"val/{name}", exclude):
                items.append((name, label, lineno))
        if not items:
            raise DataError.at(listing, msg="no image in split 'val'")
        paths = [str(val_dir / n) for n, _, _ in items]
        _check_exist(paths, listing, [ln for _, _, ln in items])
        for (name, label, _), path in zip(items, paths):
            xml_path = box_dir / (os.path.splitext(name)[0] + ".xml")
            boxes, size = _voc_boxes(xml_path, wnids[label], tolerance)
            records.append(Record(f"val/{name}", path, label, boxes, size, None))
    return RecordList(records, wnids)


# ----------------------------------------------------------------------------- layout: metadata
def _metadata_class_names(meta: Path) -> list[str] | None:
    path = meta / "class_names.txt"
    if not path.is_file():
        return None
    names = [line.strip() for line in open(path, encoding="utf-8").read().splitlines()]
    while names and not names[-1]:
        names.pop()
    for lineno, name in enumerate(names, 1):
        if not name:
            raise DataError.at(path, lineno, "empty class name")
    return names


def _metadata_names(meta: Path) -> tuple[list[str], str]:
    """Class names and where they come from: class_names.txt, else "0".."N-1" with N - 1 the
    largest label of ANY split folder (so every split of a dataset gives the same class count)."""
    names = _metadata_class_names(meta)
    if names is not None:
        return names, "class_names.txt"
    n = -1
    for path in sorted(meta.glob("*/class_labels.txt")):
        for lineno, line in _lines(path):
            label = _fields(path, lineno, line, 2, ",", "<image_id>,<label>")[1]
            n = max(n, _int(path, lineno, label, "label"))
    if n < 0:
        raise DataError.at(meta, msg="no <split>/class_labels.txt to count the classes from")
    return [str(i) for i in range(n + 1)], "largest label of the split folders"


def _load_metadata(root: Path, meta: Path, split: str, exclude: set[str], tolerance: float) -> RecordList:
    _require(meta, "metadata", "metadata", folder=True)
    folder = _require(meta / split, f"split '{split}'", "metadata", folder=True)
    ids_file = _require(folder / "image_ids.txt", "image id list", "metadata")
    labels_file = _require(folder / "class_labels.txt", "class label", "metadata")
    sizes_file = _require(folder / "image_sizes.txt", "image size", "metadata")
    loc_file = folder / "localization.txt"
    if split != "train":
        _require(loc_file, "box (localization)", "metadata")
    ids: dict[str, int] = {}
    for lineno, line in _lines(ids_file):
        if line in ids:
            raise DataError.at(ids_file, lineno, f"image id {line} listed twice (first on line {ids[line]})")
        ids[line] = lineno

    def table(path: Path, n: int, form: str, multi: bool = False) -> dict[str, list]:
        out: dict[str, list] = {}
        for lineno, line in _lines(path):
            parts = _fields(path, lineno, line, n, ",", form)
            if parts[0] not in ids:
                raise DataError.at(path, lineno, f"image id {parts[0]} is not in {ids_file.name}")
            if parts[0] in out and not multi:
                raise DataError.at(path, lineno, f"image id {parts[0]} listed twice")
            out.setdefault(parts[0], []).append((lineno, parts[1:]))
        return out

    labels = table(labels_file, 2, "<image_id>,<label>")
    sizes = table(sizes_file, 3, "<image_id>,<w>,<h>")
    locs = table(loc_file, 5, "<image_id>,<x0>,<y0>,<x1>,<y1>", multi=True) if loc_file.is_file() else None
    names, names_from = _metadata_names(meta)
    records = []
    for image_id, id_line in ids.items():
        for path, tab in ((labels_file, labels), (sizes_file, sizes), (loc_file, locs)):
            if tab is not None and image_id not in tab:
                raise DataError.at(path, msg=f"image id {image_id} ({ids_file.name}:{id_line}) "
                                             f"has no line in {path.name}")
        if _excluded(image_id, exclude):
            continue
        (ll, (label,)), = labels[image_id]
        label = _int(labels_file, ll, label, "label")
        _check_label(label, len(names), labels_file, ll, names_from)
        (sl, (w, h)), = sizes[image_id]
        size = (_int(sizes_file, sl, w, "width"), _int(sizes_file, sl, h, "height"))
        if size[0] <= 0 or size[1] <= 0:
            raise DataError.at(sizes_file, sl, f"bad image size {size}")
        boxes = []
        for bl, vals in (locs[image_id] if locs is not None else []):
            box = tuple(_float(loc_file, bl, v, c) for v, c in zip(vals, ("x0", "y0", "x1", "y1")))
            _check_box(box, size, loc_file, bl, tolerance)
            boxes.append(box)
        records.append(Record(image_id, str(root / image_id), label,
                              np.asarray(boxes, np.float32).reshape(-1, 4), size, None))
    if not records:
        raise DataError.at(ids_file, msg=f"no image in split '{split}'")
    _check_exist([r.path for r in records], ids_file, [ids[r.image_id] for r in records])
    return RecordList(records, names)


# ----------------------------------------------------------------------------- public readers
def load_records(root, layout: str, split: str, *, metadata_root=None, exclude_ids=(),
                 check_images: bool = False, box_tolerance: float = BOX_TOLERANCE) -> list[Record]:
    """Read one split of a dataset (see the module docstring for the layouts and box conventions).

    ``check_images=True`` also opens and decodes every image (slow) and checks its size against the
    annotation. Returns a list (a :class:`RecordList` that remembers the class count and names).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError.at(root, msg=f"dataset root not found (layout '{layout}')")
    exclude = {str(e) for e in exclude_ids}
    if layout == "cub":
        records = _load_cub(root, split, exclude, box_tolerance)
    elif layout == "ilsvrc":
        records = _load_ilsvrc(root, split, exclude, box_tolerance)
    else:
        meta = Path(metadata_root).expanduser().resolve() if metadata_root else root / "metadata"
        records = _load_metadata(root, meta, split, exclude, box_tolerance)
    if check_images:
        for record in records:
            _verify_image(record)
    return records


def class_names(root, layout: str, *, metadata_root=None) -> list[str]:
    """Class names in label order: CUB classes.txt (or "1".."N"), ILSVRC sorted wnids,
    metadata class_names.txt (or "0".."N-1" from the labels of every split folder)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError.at(root, msg=f"dataset root not found (layout '{layout}')")
    if layout == "cub":
        names = _cub_class_names(root)
        if names is None:
            path = _require(root / "image_class_labels.txt", "class label", "cub")
            n = 0
            for lineno, line in _lines(path):
                cls = _fields(path, lineno, line, 2, None, "<id> <class>")[1]
                n = max(n, _int(path, lineno, cls, "class"))
            names = [str(i) for i in range(1, n + 1)]
        return names
    if layout == "ilsvrc":
        return _ilsvrc_wnids(root)
    meta = Path(metadata_root).expanduser().resolve() if metadata_root else root / "metadata"
    _require(meta, "metadata", "metadata", folder=True)
    return _metadata_names(meta)[0]


# ----------------------------------------------------------------------------- transforms
class SoftMask(tv_tensors.Mask):
    """A soft [0, 1] float mask (SPOL pseudo masks): resampled BILINEARLY (without antialiasing,
    like cv2.resize INTER_LINEAR) by every interpolating transform, where a GT ``tv_tensors.Mask``
    uses nearest. Crops, flips and pads behave as for masks; colour transforms leave it alone."""


def _bilinear_kernel(image_kernel):
    def kernel(inpt, *args, **kwargs):
        kwargs["interpolation"] = v2.InterpolationMode.BILINEAR
        if "antialias" in kwargs:
            kwargs["antialias"] = False
        out = image_kernel(inpt.as_subclass(torch.Tensor), *args, **kwargs)
        return tv_tensors.wrap(out, like=inpt)
    return kernel


for _functional, _image_kernel in ((F.resize, F.resize_image), (F.resized_crop, F.resized_crop_image),
                                   (F.affine, F.affine_image), (F.rotate, F.rotate_image),
                                   (F.perspective, F.perspective_image), (F.elastic, F.elastic_image)):
    F.register_kernel(_functional, SoftMask)(_bilinear_kernel(_image_kernel))


def _pair(size) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f"size must be an int or (h, w), got {size}")
    return size


def build_transform(kind: str, *, resize: int | tuple, crop: int | None = None, flip: bool = False) -> v2.Compose:
    """Joint image/mask transform. ``resize`` int = square (r, r); tuple = (h, w).

    "train": Resize -> RandomCrop(crop) -> RandomHorizontalFlip (if flip);
    "center": Resize -> CenterCrop(crop) (SPOL test geometry: 256x256, crop 224);
    "resize": Resize only (WSOL protocol: whole image to 224x224).
    All end with ToImage, ToDtype(float32, scale=True) and ImageNet Normalize, which touch only
    the image: masks keep their dtype and values.
    """
    steps: list = [v2.ToImage(), v2.Resize(_pair(resize), antialias=True)]
    if kind == "train":
        if crop is not None:
            steps.append(v2.RandomCrop(crop))
        if flip:
            steps.append(v2.RandomHorizontalFlip())
    elif kind == "center":
        if crop is None:
            raise ValueError("build_transform('center') needs crop")
        steps.append(v2.CenterCrop(crop))
    elif kind == "resize":
        if crop is not None:
            raise ValueError("build_transform('resize') takes no crop")
    else:
        raise ValueError(f"kind must be 'train', 'center' or 'resize', got {kind!r}")
    if kind != "train" and flip:
        raise ValueError(f"flip is only for kind 'train', not {kind!r}")
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(steps)


class SPOLTransform:
    """The SPOL authors' image pipeline (albumentations ``Normalize -> Resize -> [RandomCrop ->
    HorizontalFlip | CenterCrop] -> ToTensorV2``), computed with the same numpy/cv2 operations:

    * the uint8 RGB image is normalised FIRST, in float32 (``(x - mean*255) * (1 / (std*255))``),
      then resized as a float image with ``cv2.resize`` INTER_LINEAR (no antialiasing);
    * masks (``"mask"``, ``"pseudo_mask"``) are resized with INTER_NEAREST and cropped/flipped with
      the image; their values are left as they are;
    * random crop offsets ``int((size - crop) * u)``, ``u`` uniform in [0, 1), flip with p = 0.5, both
      drawn from torch's generator (seeded per DataLoader worker).

    ``kind`` as :func:`build_transform`: "train" (resize, random crop, flip), "center" (resize,
    centre crop ``(size - crop) // 2``), "resize" (resize only). Takes and returns the sample dict
    of :class:`WSOLDataset` (tensors ``[C, H, W]``).
    """

    def __init__(self, kind: str, *, resize, crop: int | None = None, flip: bool = False):
        if kind not in ("train", "center", "resize"):
            raise ValueError(f"kind must be 'train', 'center' or 'resize', got {kind!r}")
        if kind == "center" and crop is None:
            raise ValueError("SPOLTransform('center') needs crop")
        if kind == "resize" and crop is not None:
            raise ValueError("SPOLTransform('resize') takes no crop")
        if kind != "train" and flip:
            raise ValueError(f"flip is only for kind 'train', not {kind!r}")
        self.kind, self.size, self.crop, self.flip = kind, _pair(resize), crop, flip
        mean = np.array(IMAGENET_MEAN, dtype=np.float32)
        mean *= 255.0
        std = np.array(IMAGENET_STD, dtype=np.float32)
        std *= 255.0
        self.mean, self.denominator = mean, np.reciprocal(std, dtype=np.float32)

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """uint8 ``[H, W, 3]`` RGB -> float32, albumentations' ``Normalize()`` to the last bit."""
        image = image.astype(np.float32)
        image -= self.mean
        image *= self.denominator
        return image

    def draw(self) -> dict:
        """Random parameters of one "train" sample: crop origin fractions and the flip."""
        u = torch.rand(3)
        return {"h_start": float(u[0]), "w_start": float(u[1]), "flip": bool(u[2] < 0.5) and self.flip}

    def apply(self, sample: dict, h_start: float = 0.0, w_start: float = 0.0, flip: bool = False) -> dict:
        """Apply with given random parameters (``h_start``, ``w_start`` in [0, 1) for "train")."""
        import cv2

        height, width = self.size
        y0 = x0 = 0
        crop = None
        if self.crop is not None:
            crop = _pair(self.crop)
            if self.kind == "center":
                y0, x0 = (height - crop[0]) // 2, (width - crop[1]) // 2
            else:
                y0, x0 = int((height - crop[0]) * h_start), int((width - crop[1]) * w_start)

        def geometry(array: np.ndarray, interpolation) -> np.ndarray:
            if array.shape[:2] != (height, width):
                array = cv2.resize(array, (width, height), interpolation=interpolation)
            if crop is not None:
                array = array[y0:y0 + crop[0], x0:x0 + crop[1]]
            if flip:
                array = array[:, ::-1]
            return np.ascontiguousarray(array)

        out = {}
        for key, value in sample.items():
            array = value.as_subclass(torch.Tensor).numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            if key == "image":
                image = geometry(self.normalize(array.transpose(1, 2, 0)), cv2.INTER_LINEAR)
                out[key] = torch.from_numpy(image.transpose(2, 0, 1).copy())
            else:  # masks [C, H, W]: nearest, values unchanged
                mask = geometry(array.transpose(1, 2, 0), cv2.INTER_NEAREST)
                if mask.ndim == 2:
                    mask = mask[:, :, None]
                out[key] = torch.from_numpy(mask.transpose(2, 0, 1).copy())
        return out

    def __call__(self, sample: dict) -> dict:
        return self.apply(sample, **self.draw()) if self.kind == "train" else self.apply(sample)


def build_spol_transform(kind: str, *, resize, crop: int | None = None, flip: bool = False) -> SPOLTransform:
    """:class:`SPOLTransform`: the SPOL stages' resize (authors' order and interpolation)."""
    return SPOLTransform(kind, resize=resize, crop=crop, flip=flip)


def _id_stem(image_id: str) -> str:
    return os.path.splitext(image_id)[0]


def pseudo_mask_candidates(mask_dir, image_id: str) -> list[Path]:
    """Where the pseudo mask of ``image_id`` may be, in order: ours (``<id stem>.png``), then the SPOL
    authors' names (CUB ``<id stem>.png``; ImageNet the training image's own name, a JPEG, relative
    to ``train/``), so that the seg stage reads masks written by either."""
    mask_dir = Path(mask_dir)
    ids = [image_id]
    if image_id.startswith("train/"):
        ids.append(image_id[len("train/"):])
    out = []
    for i in ids:
        out += [mask_dir / (_id_stem(i) + ".png"), mask_dir / i]
    return list(dict.fromkeys(out))


def find_pseudo_mask(mask_dir, image_id: str) -> Path:
    """The first existing :func:`pseudo_mask_candidates` (ours when none exists, for the error)."""
    candidates = pseudo_mask_candidates(mask_dir, image_id)
    for path in candidates:
        if path.is_file():
            return path
    return candidates[0]


class WSOLDataset(torch.utils.data.Dataset):
    """Images (and optionally GT / pseudo masks) of a list of records, transformed jointly.

    ``__getitem__(i)`` -> dict: "image" float [3,H,W] normalised, "label" int, "index" int,
    "mask" float [1,H,W] in [0,1] (GT mask / 255, when ``with_gt_mask``; nearest resampling),
    "pseudo_mask" float [3,H,W] in [0,1] (when ``pseudo_mask_dir``; the file of
    :func:`find_pseudo_mask`), / 255 in the file's B, G, R order as ``cv2.imread`` gives it (the
    SPOL authors' layout: 0 = CAM, 1 = Gaussian prior, 2 = 0); resampled bilinearly by
    :func:`build_transform`, nearest by :class:`SPOLTransform`. Masks must have the image's size.
    """

    def __init__(self, records, transform, *, with_gt_mask=False, pseudo_mask_dir=None):
        self.records = list(records)
        self.transform = transform
        self.with_gt_mask = with_gt_mask
        self.pseudo_mask_dir = Path(pseudo_mask_dir) if pseudo_mask_dir is not None else None
        if with_gt_mask:
            for r in self.records:
                if r.mask_path is None:
                    raise DataError.at(r.path, msg="no GT mask for this image (only the 'cub' layout "
                                                   "with a segmentations/ folder has masks)")

    def __len__(self) -> int:
        return len(self.records)

    def pseudo_mask_path(self, record: Record) -> Path:
        return find_pseudo_mask(self.pseudo_mask_dir, record.image_id)

    @staticmethod
    def _open(path, mode: str, what: str, hint: str = "") -> Image.Image:
        try:
            with Image.open(path) as im:
                return im.convert(mode)
        except FileNotFoundError:
            raise DataError.at(path, msg=f"{what} not found{hint}") from None
        except Exception as e:
            raise DataError.at(path, msg=f"unreadable or corrupt {what}: {e}") from None

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        image = self._open(record.path, "RGB", "image")
        sample = {"image": tv_tensors.Image(F.pil_to_tensor(image))}
        if self.with_gt_mask:
            mask = self._open(record.mask_path, "L", "GT mask")
            self._same_size(mask, image, record.mask_path)
            sample["mask"] = tv_tensors.Mask(F.pil_to_tensor(mask))
        if self.pseudo_mask_dir is not None:
            path = self.pseudo_mask_path(record)
            hint = " (pseudo masks are written by the cam stage's test step, spol/cam/test.py)"
            pseudo = self._open(path, "RGB", "pseudo mask", hint)
            self._same_size(pseudo, image, path)
            # RGB -> the file's B, G, R order (cv2.imread's, in which the SPOL authors index it)
            sample["pseudo_mask"] = SoftMask(F.pil_to_tensor(pseudo).flip(0).float() / 255.0)
        out = self.transform(sample)
        item = {"image": out["image"].as_subclass(torch.Tensor), "label": int(record.label), "index": int(index)}
        if "mask" in out:
            item["mask"] = out["mask"].as_subclass(torch.Tensor).float() / 255.0
        if "pseudo_mask" in out:
            item["pseudo_mask"] = out["pseudo_mask"].as_subclass(torch.Tensor).float().clamp_(0.0, 1.0)
        return item

    @staticmethod
    def _same_size(mask: Image.Image, image: Image.Image, path) -> None:
        if mask.size != image.size:
            raise DataError.at(path, msg=f"mask is {mask.size[0]}x{mask.size[1]} but its image is "
                                         f"{image.size[0]}x{image.size[1]}")


# ----------------------------------------------------------------------------- evaluation geometry
def protocol_geometry(protocol: str, input_size: int = 224, resize_size: int = 256) -> dict:
    """Where an original image lands in the evaluated input.

    "wsol" (Choe et al.): the whole image resized to input_size x input_size.
    "spol" (SPOL test): resized to resize_size x resize_size, centre crop input_size (offset as
    torchvision's CenterCrop: int(round((resize - input) / 2))).
    Returns {"protocol", "resize": (h, w), "crop": int | None, "offset": (x, y), "output_size": (h, w)}.
    """
    if protocol == "wsol":
        return {"protocol": "wsol", "resize": (input_size, input_size), "crop": None,
                "offset": (0, 0), "output_size": (input_size, input_size)}
    if protocol == "spol":
        if resize_size < input_size:
            raise ValueError(f"spol protocol: resize_size {resize_size} < input_size {input_size}")
        off = int(round((resize_size - input_size) / 2.0))
        return {"protocol": "spol", "resize": (resize_size, resize_size), "crop": input_size,
                "offset": (off, off), "output_size": (input_size, input_size)}
    raise ValueError(f"protocol must be 'wsol' or 'spol', got {protocol!r}")


def transform_boxes(boxes, size, protocol: str, input_size: int = 224, resize_size: int = 256) -> np.ndarray:
    """Map original-pixel boxes (N, 4) of an image of ``size`` = (w, h) into the evaluated input.

    "wsol": Choe et al.'s resize_bbox, int(coord * input_size / w or h) per coordinate (truncation).
    "spol": scale to resize_size x resize_size (floats, no rounding), subtract the crop offset,
    clip to [0, input_size - 1]; a box with no area left inside the crop is dropped, so an image
    can end with 0 boxes (then it is a miss). Returns float32 (M, 4).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    w, h = float(size[0]), float(size[1])
    geom = protocol_geometry(protocol, input_size, resize_size)
    if protocol == "wsol":
        out = np.empty_like(boxes)
        out[:, 0::2] = boxes[:, 0::2] * float(input_size) / w
        out[:, 1::2] = boxes[:, 1::2] * float(input_size) / h
        return np.trunc(out).astype(np.float32)
    off = geom["offset"][0]
    out = np.empty_like(boxes)
    out[:, 0::2] = boxes[:, 0::2] * float(resize_size) / w - off
    out[:, 1::2] = boxes[:, 1::2] * float(resize_size) / h - off
    inside = (out[:, 2] > 0) & (out[:, 3] > 0) & (out[:, 0] < input_size - 1) & (out[:, 1] < input_size - 1)
    out = np.clip(out[inside], 0, input_size - 1)
    return out.astype(np.float32).reshape(-1, 4)


def load_gt_mask(record: Record, protocol: str, input_size: int = 224, resize_size: int = 256) -> np.ndarray | None:
    """The record's GT mask, grayscale uint8 raw values (0..255), nearest-resized to the protocol
    geometry (input_size x input_size); None when the record has no mask."""
    if record.mask_path is None:
        return None
    import cv2

    mask = cv2.imread(record.mask_path, cv2.IMREAD_GRAYSCALE)
    if mask is None:
        kind = "not found" if not os.path.isfile(record.mask_path) else "unreadable or corrupt"
        raise DataError.at(record.mask_path, msg=f"GT mask {kind}")
    geom = protocol_geometry(protocol, input_size, resize_size)
    rh, rw = geom["resize"]
    mask = cv2.resize(mask, (rw, rh), interpolation=cv2.INTER_NEAREST)
    if geom["crop"] is not None:
        ox, oy = geom["offset"]
        mask = mask[oy:oy + input_size, ox:ox + input_size]
    return np.ascontiguousarray(mask)


def spol_gt_boxes(boxes, size, input_size: int = 224, resize_size: int = 256) -> np.ndarray:
    """Ground-truth boxes as the SPOL authors' seg test computes them (``spol``/``spol-official``
    protocols), float64 ``(M, 4)``, ``x0, y0, x1, y1`` in the ``input_size`` crop.

    Each box is first clipped to the image (``[0, W - 1] x [0, H - 1]``, their ImageNet form, the
    same as their CUB form for any box that starts inside the image), then goes through
    albumentations' pascal_voc bbox path of ``Resize(resize) -> CenterCrop(input)``: normalised by
    (W, H), scaled to the resized image, shifted by the crop offset ``(resize - input) // 2``,
    normalised by the crop, clipped to [0, 1] and scaled back, i.e. clipped to ``[0, input]``
    (not ``input - 1``). A box with no area left is dropped (so an image can have none) - the same
    operations in the same order, so the floats are theirs. A box with ``x1 <= x0`` after the first
    clip, on which their script stops with an error, is dropped too.
    """
    w, h = int(size[0]), int(size[1])
    off = (resize_size - input_size) // 2
    out = []
    for box in np.asarray(boxes, np.float64).reshape(-1, 4):
        xmin, ymin, xmax, ymax = (float(v) for v in box)
        xmin, ymin = min(max(xmin, 0), w - 1), min(max(ymin, 0), h - 1)
        xmax, ymax = max(min(xmax, w - 1), 0), max(min(ymax, h - 1), 0)
        if xmax <= xmin or ymax <= ymin:
            continue
        # pascal_voc -> albumentations (normalised by the original size)
        nb = (xmin / w, ymin / h, xmax / w, ymax / h)
        # CenterCrop on the resized image: denormalise, shift, normalise by the crop
        x0, y0, x1, y1 = (nb[0] * resize_size, nb[1] * resize_size, nb[2] * resize_size, nb[3] * resize_size)
        nb = ((x0 - off) / input_size, (y0 - off) / input_size, (x1 - off) / input_size, (y1 - off) / input_size)
        # filter_bboxes: area before and after clipping to [0, 1]
        area = (nb[2] * input_size - nb[0] * input_size) * (nb[3] * input_size - nb[1] * input_size)
        nb = tuple(np.clip(nb, 0, 1.0))
        clipped = (nb[2] * input_size - nb[0] * input_size) * (nb[3] * input_size - nb[1] * input_size)
        if not area or clipped / area <= 0.0 or clipped <= 0.0:
            continue
        out.append([nb[0] * input_size, nb[1] * input_size, nb[2] * input_size, nb[3] * input_size])
    return np.asarray(out, np.float64).reshape(-1, 4)
