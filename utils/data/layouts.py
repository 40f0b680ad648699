"""Layout readers: one split of a dataset on disk -> a list of :class:`Record`.

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
    val/*.JPEG              the val images, either flat (as distributed) ...
    val.txt                 "<file name> <class index>"  (same sorted-wnid indices)
    val/<wnid>/*.JPEG       ... or in class folders (as TS-CAM and PSOL users keep them): labels from
                            the folder names, val.txt not needed (if present, it still gives the
                            labels and each image is looked for in its class's folder, then in val/)
    box/<val file stem>.xml Pascal-VOC, one per val image, with all its objects

  The class order comes from train/, else wnids.txt, else the class folders of val/.

  Val boxes: every ``<object>`` whose ``<name>`` is the labelled class's wnid, xmin..ymax as given
  (GT-known takes the best of them); other classes' objects are ignored. Val image size comes from
  the XML ``<size>``; train sizes from the image headers. Train records have boxes of shape (0, 4).
  ``image_id`` = "train/<wnid>/<file>" or "val/<file>" (the ids of Choe et al.'s metadata), for a
  val image in a class folder too (so its score maps and predictions keep one name).
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
  masks (mask_path is None): PxAP needs the "cub" or "openimages" layout. Its "val" splits (CUBV2 /
  ImageNetV2) are the fully supervised held-out sets on which thresholds are chosen.

``"openimages"``: OpenImages30k as Choe et al. (CVPR 2020) distribute it: their metadata files
(``metadata_root``, default ``root/metadata``, e.g. wsolevaluation's ``metadata/OpenImages``), images
and masks under ``root`` (their ``dataset/OpenImages``)::

    <split>/image_ids.txt     "<image_id>"                   images at root/<image_id>
    <split>/class_labels.txt  "<image_id>,<label>"           0-based
    <split>/localization.txt  "<image_id>,<mask_path>,<ignore_path>", one line per instance mask, masks at
                              root/<mask_path>; an image's one ignore mask on its first line, the third
                              field empty on its other lines (as their ``get_mask_paths`` requires); an
                              empty ignore field on the first line = no ignore region. Required for every
                              split but "train" (their train split has image-level labels only).
    class_names.txt           optional, as for "metadata"

  No image_sizes.txt: sizes come from the image headers. GT = the union of the image's instance
  masks (each mask pixel > 0.5, after a nearest resize to the evaluated size), ignore = ignore mask
  minus that union: Choe et al.'s ``get_mask``, computed by :mod:`utils.evaluation.masks`. A mask must
  show the whole image: the image's size, or the image at another scale with each side rounded to
  a pixel (OpenImages V5 masks are often larger than the images, with the same aspect ratio).
  Records: ``instance_mask_paths``, ``ignore_mask_path``; boxes have shape (0, 4) (the protocol has no
  boxes; the evaluator reports PxAP only) and ``mask_path`` is None.

``exclude_ids`` leaves images out: an entry matches an image_id or its file name (or, for "cub",
the numeric id of images.txt), e.g.
``("ILSVRC2012_val_00033202.JPEG",)``, the val image whose label is known to be wrong (SPOL excludes it).

Every bad input raises :class:`utils.errors.DataError` naming the file (and the 1-based line):
missing root or file, malformed line, unknown/duplicate/inconsistent ids, label out of range,
box outside the image (beyond ``box_tolerance`` = 1 px), empty split, a split the layout does not
have, missing or bad XML, a dataset root that is a loop of symbolic links, unreadable image (at load
time with ``check_images=True``, otherwise in ``utils.data.dataset.WSOLDataset``), an image whose
size is not the one its annotation states (``Record.size_source``; checked by ``check_sizes=True``
from the headers, ``check_images=True``, or ``utils.data.dataset.WSOLDataset`` on every image it
decodes); for "openimages" also a missing or unreadable mask, a mask that does not show its image
(aspect ratio), an image without a mask line, a second ignore mask.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from utils.ranges import LAYOUT_SPLITS  # in the base: --split is checked before torch loads
from utils.errors import DataError

LAYOUTS = ("cub", "ilsvrc", "metadata", "openimages")
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
    # where ``size`` was read when not from the image itself: "box/x.xml" (ILSVRC val),
    # "metadata/val/image_sizes.txt:3"; None: the image's own header (CUB, ILSVRC train, OpenImages)
    size_source: str | None = None
    instance_mask_paths: tuple[str, ...] = ()  # "openimages": the instance masks whose union is the GT
    ignore_mask_path: str | None = None        # "openimages": the image's ignore mask (None: none)


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


_warned: set[str] = set()


def _warn_unseen(where, missing: list[int], n: int, names_file: str) -> None:
    """Without a class list the class count is the largest label: labels no image has are classes
    all the same (the network gets an output for each). One warning line per process, rank 0."""
    if not missing:
        return
    shown = ", ".join(str(i) for i in missing[:5]) + (", ..." if len(missing) > 5 else "")
    line = (f"warning: {where}: no {names_file}: {n} classes counted up to the largest label, {len(missing)} "
            f"without any image ({shown}): add {names_file} to fix the class list")
    if line not in _warned and int(os.environ.get("RANK", "0")) == 0:
        import sys

        _warned.add(line)
        print(line, file=sys.stderr, flush=True)


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


def check_image_size(record: Record, size) -> None:
    """The size ``(w, h)`` of the record's image as read must be the size its boxes were made for
    (``record.size``, from an XML ``<size>`` or ``image_sizes.txt``): a resized copy kept with the
    original annotations would scale every box wrong. One ``DataError`` naming the image and the
    annotation."""
    if tuple(size) != tuple(record.size):
        source = record.size_source or "the annotation"
        raise DataError.at(record.path, msg=f"image is {size[0]}x{size[1]} but {source} says "
                                            f"{record.size[0]}x{record.size[1]}: its boxes would be scaled "
                                            "wrong; use the images the annotations were made for, or fix them")


def _verify_image(record: Record) -> None:
    try:
        with Image.open(record.path) as im:
            im.load()
            size = im.size
    except FileNotFoundError:
        raise DataError.at(record.path, msg="image file not found") from None
    except Exception as e:
        raise DataError.at(record.path, msg=f"unreadable or corrupt image: {e}") from None
    check_image_size(record, size)


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


def _check_split(layout: str, split: str, root: Path) -> None:
    if split not in LAYOUT_SPLITS[layout]:
        raise DataError.at(root, msg=f"no split '{split}': the '{layout}' layout has the splits "
                                     f"{' and '.join(LAYOUT_SPLITS[layout])}")


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
    _check_split("cub", split, root)
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
        used = {_int(files["labels"], ln, v[0], "class") for ln, v in labels.values()}
        n = max(used, default=0)
        names = [str(i) for i in range(1, n + 1)]
        _warn_unseen(files["labels"], [i for i in range(1, n + 1) if i not in used], n, "classes.txt")
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
        val_classes = _ilsvrc_val_class_folders(root / "val")
        if val_classes:
            return val_classes
        raise DataError.at(path, msg="missing: the 'ilsvrc' layout needs root/train/<wnid>/ folders, "
                                     "root/wnids.txt or root/val/<wnid>/ folders to define the class order")
    seen: dict[str, int] = {}
    for lineno, line in _lines(path):
        (wnid,) = _fields(path, lineno, line, 1, None, "<wnid>")
        if wnid in seen:
            raise DataError.at(path, lineno, f"wnid {wnid} listed twice (first on line {seen[wnid]})")
        seen[wnid] = lineno
    if not seen:
        raise DataError.at(path, msg="no wnid listed")
    return sorted(seen)


def _ilsvrc_val_class_folders(val_dir: Path) -> list[str]:
    """The sorted class folders of a class-folder val tree (val/<wnid>/*.JPEG); [] for a flat val/."""
    if not val_dir.is_dir():
        return []
    return sorted(e.name for e in os.scandir(val_dir) if e.is_dir())


def _ilsvrc_val_from_folders(val_dir: Path, wnids: list[str], exclude: set[str]) -> list[tuple[str, int, str]]:
    """(file name, label, path) of every image of a class-folder val tree, labels from the folders."""
    index = {wnid: i for i, wnid in enumerate(wnids)}
    items, seen = [], {}
    for wnid in _ilsvrc_val_class_folders(val_dir):
        if wnid not in index:
            raise DataError.at(val_dir / wnid, msg=f"val class folder {wnid} is not one of the {len(wnids)} "
                                                   "wnids (train/ folders or wnids.txt)")
        for name in sorted(e.name for e in os.scandir(val_dir / wnid) if e.name.lower().endswith(IMAGE_EXTENSIONS)):
            if name in seen:
                raise DataError.at(val_dir / wnid / name, msg=f"val image {name} is also in {seen[name]}/ "
                                                              "(its image id val/<file> must be unique)")
            seen[name] = wnid
            if not _excluded(f"val/{name}", exclude):
                items.append((name, index[wnid], str(val_dir / wnid / name)))
    return items


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
    _check_split("ilsvrc", split, root)
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
        val_dir = _require(root / "val", "val image", "ilsvrc", folder=True)
        class_folders = set(_ilsvrc_val_class_folders(val_dir))
        if class_folders and not (root / "val.txt").is_file():  # val/<wnid>/*.JPEG: labels from the folders
            located = _ilsvrc_val_from_folders(val_dir, wnids, exclude)
            if not located:
                raise DataError.at(val_dir, msg="no image in split 'val' (class folders val/<wnid>/)")
            items = [(name, label, None) for name, label, _ in located]
            paths = [path for _, _, path in located]
        else:
            listing = root / "val.txt"
            if not listing.is_file():
                raise DataError.at(listing, msg="missing val label list file: the 'ilsvrc' layout needs root/val.txt "
                                                "or val/<wnid>/ class folders")
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
            # with class folders, an image is in its class's folder (else flat in val/)
            paths = [str(val_dir / wnids[label] / n) if (val_dir / wnids[label] / n).is_file() else str(val_dir / n)
                     for n, label, _ in items] if class_folders else [str(val_dir / n) for n, _, _ in items]
            _check_exist(paths, listing, [ln for _, _, ln in items])
        box_dir = _require(root / "box", "val box XML", "ilsvrc", folder=True)
        for (name, label, _), path in zip(items, paths):
            xml_path = box_dir / (os.path.splitext(name)[0] + ".xml")
            boxes, size = _voc_boxes(xml_path, wnids[label], tolerance)
            records.append(Record(f"val/{name}", path, label, boxes, size, None, str(xml_path)))
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
    n, used = -1, set()
    for path in sorted(meta.glob("*/class_labels.txt")):
        for lineno, line in _lines(path):
            label = _fields(path, lineno, line, 2, ",", "<image_id>,<label>")[1]
            used.add(_int(path, lineno, label, "label"))
            n = max(n, _int(path, lineno, label, "label"))
    if n < 0:
        raise DataError.at(meta, msg="no <split>/class_labels.txt to count the classes from")
    _warn_unseen(meta / "*" / "class_labels.txt", [i for i in range(n + 1) if i not in used and i >= 0], n + 1,
                 "class_names.txt")
    return [str(i) for i in range(n + 1)], "largest label of the split folders"


def _image_ids(path: Path) -> dict[str, int]:
    """Image id -> its line in ``image_ids.txt`` (metadata and OpenImages layouts); an id listed twice
    is one error naming both lines."""
    ids: dict[str, int] = {}
    for lineno, line in _lines(path):
        if line in ids:
            raise DataError.at(path, lineno, f"image id {line} listed twice (first on line {ids[line]})")
        ids[line] = lineno
    return ids


def _load_metadata(root: Path, meta: Path, split: str, exclude: set[str], tolerance: float) -> RecordList:
    _require(meta, "metadata", "metadata", folder=True)
    folder = _require(meta / split, f"split '{split}'", "metadata", folder=True)
    ids_file = _require(folder / "image_ids.txt", "image id list", "metadata")
    labels_file = _require(folder / "class_labels.txt", "class label", "metadata")
    sizes_file = _require(folder / "image_sizes.txt", "image size", "metadata")
    loc_file = folder / "localization.txt"
    if split != "train":
        _require(loc_file, "box (localization)", "metadata")
    ids = _image_ids(ids_file)

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
                              np.asarray(boxes, np.float32).reshape(-1, 4), size, None, f"{sizes_file}:{sl}"))
    if not records:
        raise DataError.at(ids_file, msg=f"no image in split '{split}'")
    _check_exist([r.path for r in records], ids_file, [ids[r.image_id] for r in records])
    return RecordList(records, names)


# ----------------------------------------------------------------------------- layout: openimages
def _mask_size(path: str, listing: Path, lineno: int, what: str) -> tuple[int, int]:
    """(width, height) of a mask from its header; errors name the localization line."""
    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except FileNotFoundError:
        raise DataError.at(listing, lineno, f"{what} {path} not found") from None
    except Exception as e:
        raise DataError.at(listing, lineno, f"cannot read the header of {what} {path}: {e}") from None


def _shows_whole_image(mask_size: tuple[int, int], image_size: tuple[int, int]) -> bool:
    """True when a mask of ``mask_size`` is the image at some scale, each side rounded to a pixel:
    ``|mw * ih - mh * iw| <= (mw + mh + iw + ih) / 2`` (rounding moves each side by at most half a
    pixel). The image's own size passes; a transposed mask or another aspect ratio does not."""
    (mw, mh), (iw, ih) = mask_size, image_size
    return abs(mw * ih - mh * iw) <= (mw + mh + iw + ih) / 2


def _load_openimages(root: Path, meta: Path, split: str, exclude: set[str]) -> RecordList:
    _require(meta, "metadata", "openimages", folder=True)
    folder = _require(meta / split, f"split '{split}'", "openimages", folder=True)
    ids_file = _require(folder / "image_ids.txt", "image id list", "openimages")
    labels_file = _require(folder / "class_labels.txt", "class label", "openimages")
    loc_file = folder / "localization.txt"
    if split != "train":
        _require(loc_file, "mask list (localization)", "openimages")
    ids = _image_ids(ids_file)
    labels: dict[str, tuple[int, str]] = {}
    for lineno, line in _lines(labels_file):
        image_id, label = _fields(labels_file, lineno, line, 2, ",", "<image_id>,<label>")
        if image_id not in ids:
            raise DataError.at(labels_file, lineno, f"image id {image_id} is not in {ids_file.name}")
        if image_id in labels:
            raise DataError.at(labels_file, lineno, f"image id {image_id} listed twice "
                                                    f"(first on line {labels[image_id][0]})")
        labels[image_id] = (lineno, label)
    # image id -> [(line, mask path)], (line, ignore path or None)
    masks: dict[str, list[tuple[int, str]]] = {}
    ignores: dict[str, tuple[int, str | None]] = {}
    form = "<image_id>,<mask_path>,<ignore_path>"
    for lineno, line in (_lines(loc_file) if loc_file.is_file() else ()):
        image_id, mask, ignore = _fields(loc_file, lineno, line, 3, ",", form)
        if image_id not in ids:
            raise DataError.at(loc_file, lineno, f"image id {image_id} is not in {ids_file.name}")
        if not mask:
            raise DataError.at(loc_file, lineno, f"empty mask path (expected '{form}')")
        if image_id in masks and ignore:
            raise DataError.at(loc_file, lineno, f"second ignore mask for {image_id}: the ignore mask goes on "
                                                 f"the image's first line ({ignores[image_id][0]}), the third "
                                                 f"field of its other lines stays empty")
        if image_id not in masks:
            ignores[image_id] = (lineno, ignore or None)
        masks.setdefault(image_id, []).append((lineno, mask))
    names, names_from = _metadata_names(meta)
    selected = []
    for image_id, id_line in ids.items():
        if image_id not in labels:
            raise DataError.at(labels_file, msg=f"image id {image_id} ({ids_file.name}:{id_line}) has no line "
                                                f"in {labels_file.name}")
        if split != "train" and image_id not in masks:
            raise DataError.at(loc_file, msg=f"image id {image_id} ({ids_file.name}:{id_line}) has no mask "
                                             f"line in {loc_file.name}")
        if not _excluded(image_id, exclude):
            selected.append(image_id)
    if not selected:
        raise DataError.at(ids_file, msg=f"no image in split '{split}'")
    paths = [str(root / image_id) for image_id in selected]
    _check_exist(paths, ids_file, [ids[i] for i in selected])
    records = []
    for image_id, path, size in zip(selected, paths, _image_sizes(paths)):
        ll, label = labels[image_id]
        label = _int(labels_file, ll, label, "label")
        _check_label(label, len(names), labels_file, ll, names_from)
        instance = []
        checks = [(lineno, rel, "mask") for lineno, rel in masks.get(image_id, ())]
        ignore_line, ignore = ignores.get(image_id, (None, None))
        if ignore is not None:
            checks.append((ignore_line, ignore, "ignore mask"))
        for lineno, rel, what in checks:
            mask_path = str(root / rel)
            mask_size = _mask_size(mask_path, loc_file, lineno, what)
            if not _shows_whole_image(mask_size, size):
                raise DataError.at(loc_file, lineno, f"{what} {rel} is {mask_size[0]}x{mask_size[1]} but its image "
                                                     f"{image_id} is {size[0]}x{size[1]} (not the image at any scale)")
            if what == "mask":
                instance.append(mask_path)
        records.append(Record(image_id, path, label, np.zeros((0, 4), np.float32), size, None,
                              instance_mask_paths=tuple(instance),
                              ignore_mask_path=str(root / ignore) if ignore is not None else None))
    return RecordList(records, names)


# ----------------------------------------------------------------------------- public readers
def _root(path, layout: str, what: str = "dataset root", *, must_exist: bool = True) -> Path:
    """``path`` resolved (symbolic links followed); a loop of links (or, ``must_exist``, a missing
    folder) is one ``DataError`` naming it."""
    path = Path(path).expanduser()
    try:
        resolved = path.resolve()
    except (RuntimeError, OSError):  # Python < 3.13: RuntimeError("Symlink loop ..."); later: OSError
        raise DataError.at(path, msg=f"{what} is a loop of symbolic links (layout '{layout}')") from None
    if must_exist and not resolved.is_dir():
        if path.is_symlink() and not path.exists():
            raise DataError.at(path, msg=f"{what} is a broken symbolic link or a loop of them (layout '{layout}')")
        raise DataError.at(resolved, msg=f"{what} not found (layout '{layout}')")
    return resolved


def load_records(root, layout: str, split: str, *, metadata_root=None, exclude_ids=(),
                 check_images: bool = False, check_sizes: bool = False,
                 box_tolerance: float = BOX_TOLERANCE) -> list[Record]:
    """Read one split of a dataset (see the module docstring for the layouts and box conventions).

    ``check_sizes=True`` reads the header of every image whose size comes from an annotation (ILSVRC
    val XMLs, metadata ``image_sizes.txt``; nothing is decoded) and checks it against that size
    (:func:`check_image_size`): ``utils.evaluation.evaluate`` does, as it decodes no image. The stages need not:
    ``utils.data.dataset.WSOLDataset`` checks every image it decodes. ``check_images=True`` also decodes every
    image (slow) and checks its size. Returns a list (a :class:`RecordList` that remembers the class
    count and names).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    root = _root(root, layout)
    exclude = {str(e) for e in exclude_ids}
    if layout == "cub":
        records = _load_cub(root, split, exclude, box_tolerance)
    elif layout == "ilsvrc":
        records = _load_ilsvrc(root, split, exclude, box_tolerance)
    elif layout == "openimages":
        meta = Path(metadata_root).expanduser().resolve() if metadata_root else root / "metadata"
        records = _load_openimages(root, meta, split, exclude)
    else:
        meta = _root(metadata_root, layout, "metadata folder", must_exist=False) if metadata_root else root / "metadata"
        records = _load_metadata(root, meta, split, exclude, box_tolerance)
    if check_sizes and not check_images:
        annotated = [r for r in records if r.size_source is not None]
        for record, size in zip(annotated, _image_sizes([r.path for r in annotated])):
            check_image_size(record, size)
    if check_images:
        for record in records:
            _verify_image(record)
    return records


def class_names(root, layout: str, *, metadata_root=None) -> list[str]:
    """Class names in label order: CUB classes.txt (or "1".."N"), ILSVRC sorted wnids,
    metadata / openimages class_names.txt (or "0".."N-1" from the labels of every split folder)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    root = _root(root, layout)
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
    meta = _root(metadata_root, layout, "metadata folder", must_exist=False) if metadata_root else root / "metadata"
    _require(meta, "metadata", layout, folder=True)
    return _metadata_names(meta)[0]
