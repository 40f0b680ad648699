"""Per-image files handed from stage to stage: classification results (``predictions.csv``, and the
SPOL authors' ``top1top5.npy`` read), boxes (``boxes.csv`` + ``boxes.json``), score maps (``.npy``
under this repository's names or Choe et al.'s). Their formats: [docs/evaluation.md](../../docs/evaluation.md) (Files).
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from utils.errors import DataError
from utils.io import atomic_save_npy, atomic_write, atomic_write_json, atomic_write_text
from utils.paths import missing_output

HEADER = ["image_id", "label", "pred_top5", "top1_correct", "top5_correct"]
DEFAULT_PRODUCER = "the classification stage (spol/cls/test.py or sltnet/classifier/test.py)"


@dataclass(frozen=True)
class Prediction:
    label: int
    top5: tuple[int, ...]
    top1_correct: bool
    top5_correct: bool


def _to_list(x):
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x).tolist()


def write_predictions(path, image_ids: Sequence[str], labels, top5) -> None:
    """Write ``predictions.csv`` atomically. ``top5``: [N, k] class ids, best first (k <= 5
    when the dataset has fewer than 5 classes); the correctness flags are derived here."""
    labels = [int(v) for v in _to_list(labels)]
    top5 = [[int(c) for c in row] for row in _to_list(top5)]
    image_ids = list(image_ids)
    if not (len(image_ids) == len(labels) == len(top5)):
        raise ValueError(f"{path}: {len(image_ids)} image ids, {len(labels)} labels, {len(top5)} top-5 rows")
    if len(set(image_ids)) != len(image_ids):
        raise ValueError(f"{path}: duplicate image ids")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER)
    for image_id, label, row in zip(image_ids, labels, top5):
        if not 1 <= len(row) <= 5:
            raise ValueError(f"{path}: image {image_id} has {len(row)} predicted classes (1 to 5 expected)")
        writer.writerow([image_id, label, " ".join(str(c) for c in row),
                         int(row[0] == label), int(label in row)])
    atomic_write_text(path, buf.getvalue())


def read_predictions(path, *, producer: str = DEFAULT_PRODUCER) -> dict[str, Prediction]:
    """Read ``predictions.csv`` -> {image_id: Prediction}.

    Raises DataError ``"<path>:<line>: ..."`` on any malformed line, and naming ``producer``
    (the stage that writes the file) when the file is missing.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError.at(path, None, f"predictions file not found: it is written by {producer}; run that first")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != HEADER:
        raise DataError.at(path, 1, f"header must be {','.join(HEADER)}")
    out: dict[str, Prediction] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not row:
            raise DataError.at(path, lineno, "empty line")
        if len(row) != len(HEADER):
            raise DataError.at(path, lineno, f"expected {len(HEADER)} fields, got {len(row)}")
        image_id, label_s, top5_s, t1_s, t5_s = row
        if not image_id:
            raise DataError.at(path, lineno, "empty image_id")
        try:
            label = int(label_s)
            top5 = tuple(int(c) for c in top5_s.split(" "))
        except ValueError:
            raise DataError.at(path, lineno, f"label and pred_top5 must be integers, got {label_s!r}, {top5_s!r}") from None
        if label < 0 or any(c < 0 for c in top5) or not 1 <= len(top5) <= 5:
            raise DataError.at(path, lineno, f"bad label {label} or pred_top5 {top5_s!r} (1 to 5 ids >= 0)")
        if t1_s not in ("0", "1") or t5_s not in ("0", "1"):
            raise DataError.at(path, lineno, f"correctness flags must be 0 or 1, got {t1_s!r}, {t5_s!r}")
        t1, t5 = t1_s == "1", t5_s == "1"
        if t1 != (top5[0] == label) or t5 != (label in top5):
            raise DataError.at(path, lineno, "correctness flags disagree with label and pred_top5")
        if image_id in out:
            raise DataError.at(path, lineno, f"duplicate image_id {image_id}")
        out[image_id] = Prediction(label, top5, t1, t5)
    return out


BOXES_HEADER = ["image_id", "x0", "y0", "x1", "y1"]


def _exact(value: float) -> str:
    """``value`` as the shortest text that reads back as the same float64 (``12`` for 12.0)."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def write_boxes_csv(path, image_ids, boxes, *, meta: dict | None = None) -> None:
    """Write ``boxes.csv`` (``image_id,x0,y0,x1,y1``) atomically, and ``boxes.json`` beside it. Each
    coordinate reads back as the value scored (a regressor's float box too), so that scoring the file
    (``python -m utils.evaluation --boxes``) gives the numbers of the step that wrote it."""
    boxes = np.asarray(boxes)
    with atomic_write(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(BOXES_HEADER)
        for image_id, box in zip(image_ids, boxes):
            writer.writerow([image_id, *[_exact(float(v)) for v in box]])
    if meta is not None:
        atomic_write_json(Path(path).with_suffix(".json"), meta)


def read_boxes_csv(path, *, written_by: str = "sltnet/localizer/test.py",
                   allow_inverted: bool = False) -> tuple[dict, dict]:
    """Read ``boxes.csv`` -> ({image_id: float array (4,)}, sidecar metadata dict or {}).

    ``allow_inverted``: keep a box with x1 < x0 or y1 < y0 as written (a box regressor predicts the
    four coordinates freely and is scored on what it predicted; only pictures read such a file).

    A missing file or a malformed line raises ``DataError`` naming the file (and line) and the stage
    that writes it.
    """
    path = Path(path)
    if not path.is_file():
        raise missing_output(path, written_by, "boxes file")
    boxes = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != BOXES_HEADER:
            raise DataError.at(path, 1, f"header must be {','.join(BOXES_HEADER)}, got {header}")
        for line, row in enumerate(reader, start=2):
            if len(row) != 5:
                raise DataError.at(path, line, f"expected 5 fields, got {len(row)}")
            try:
                box = np.array([float(v) for v in row[1:]], dtype=np.float64)
            except ValueError:
                raise DataError.at(path, line, f"non-numeric box {row[1:]}") from None
            if not np.all(np.isfinite(box)) or (not allow_inverted and (box[2] < box[0] or box[3] < box[1])):
                raise DataError.at(path, line, f"invalid box {row[1:]} (need x0<=x1, y0<=y1)")
            if row[0] in boxes:
                raise DataError.at(path, line, f"duplicate image_id {row[0]}")
            boxes[row[0]] = box
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    return boxes, meta


# ----------------------------------------------------------------------------- box files to score
ORIGINAL, INPUT = "original", "input"   # the frames of a box file's coordinates
BOX_FILE_ID_COLUMNS = ("image_id", "image")  # boxes.csv of the test steps; of python -m localize


@dataclass
class BoxFile:
    """A file of predicted boxes read by :func:`read_box_file` (``python -m utils.evaluation --boxes``).

    ``kind``: "boxes.csv" (a header line) or "plain" (``<image_id> x0 y0 x1 y1`` lines). ``frame``:
    :data:`INPUT` (pixels of the protocol's input that ``meta``, the ``boxes.json`` beside it, names) or
    :data:`ORIGINAL` (pixels of the original image). ``boxes``: image id -> float64 ``(4,)``, the first
    box given for the image; ``lines``: image id -> the line of that box. ``second_boxes``: lines of a
    plain file that give an image another box (not scored). ``inverted``: image ids whose box has
    ``x1 < x0`` or ``y1 < y0`` (kept as written; only an input-frame boxes.csv may hold one).
    """

    path: Path
    kind: str
    frame: str
    meta: dict
    boxes: dict
    lines: dict
    second_boxes: list
    inverted: list


def _box_values(path, line: int, fields) -> np.ndarray:
    try:
        box = np.array([float(v) for v in fields], dtype=np.float64)
    except ValueError:
        raise DataError.at(path, line, f"non-numeric box {' '.join(fields)}") from None
    if not np.all(np.isfinite(box)):
        raise DataError.at(path, line, f"box {' '.join(fields)} is not finite (NaN or inf)")
    return box


def _box_sidecar(path: Path) -> dict | None:
    """The ``boxes.json`` beside a boxes.csv (None when there is none), checked to name a geometry."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError.at(sidecar, None, f"unreadable sidecar of {path.name} ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or "protocol" not in meta or "input_size" not in meta:
        raise DataError.at(sidecar, None, f"the sidecar of {path.name} must be a JSON object naming the geometry of "
                                          "its boxes (protocol, input_size, resize_size), as the test steps write it")
    return meta


def read_box_file(path) -> BoxFile:
    """Read the predicted boxes of ``path`` (one box per image) for scoring: a ``boxes.csv`` or a plain file.

    - **boxes.csv** (a header ``image_id,x0,y0,x1,y1`` as the test steps write it, or ``image,x0,y0,x1,y1``
      as ``python -m localize`` does; more columns after these five, e.g. ``score``, ``class``, are
      read and not used): ids through the csv module (quoted when they hold a comma). With a
      ``boxes.json`` beside it, which names the protocol and the input size (the test steps write it),
      the boxes are in pixels of that protocol's input, scored as written; without one, in pixels
      of the original image. An image given twice is an error; an inverted box (``x1 < x0`` or ``y1 <
      y0``) is an error in original pixels, kept in an input-frame file (a box regressor's test step
      writes and scores what it predicted).
    - **plain**: one line per box, ``<image_id> x0 y0 x1 y1`` in pixels of the original image, the five
      fields separated by white space or commas (an id holding either needs boxes.csv); blank lines
      and lines starting with ``#`` are skipped. Several lines for an image: its first box is scored,
      the others are listed in ``second_boxes``. An inverted box is an error (``x y w h`` lines
      are the usual cause).

    Anything else (a missing file, text that is not UTF-8, a line of another field count, a
    non-numeric or non-finite value, an empty id, no box at all) is a ``DataError`` naming the file
    and line. Which images the boxes are for is the caller's check (it knows the split).
    """
    import re

    path = Path(path)
    if not path.is_file():
        raise DataError.at(path, None, "box file not found (--boxes: a boxes.csv of a test step or of python -m "
                                       "localize, or lines '<image_id> x0 y0 x1 y1' in original pixels)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError.at(path, None, f"unreadable box file ({type(exc).__name__}: {exc})") from None
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise DataError.at(path, None, "no box in the file (it is empty)")
    header = next(csv.reader([lines[first]]))
    boxes, where, second, inverted = {}, {}, [], []
    if header and header[0].strip() in BOX_FILE_ID_COLUMNS:
        if [h.strip() for h in header[1:5]] != BOXES_HEADER[1:]:
            raise DataError.at(path, first + 1, f"header must be {header[0].strip()},x0,y0,x1,y1 (more columns may "
                                                f"follow), got {','.join(header)}")
        meta = _box_sidecar(path)
        kind, frame = "boxes.csv", (INPUT if meta is not None else ORIGINAL)
        reader = csv.reader(io.StringIO("\n".join(lines[first + 1:]) + "\n"))
        for row in reader:
            line = first + 1 + reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                raise DataError.at(path, line, f"expected {len(header)} fields ({','.join(header)}), got {len(row)}")
            image_id = row[0]
            if not image_id:
                raise DataError.at(path, line, "empty image id")
            box = _box_values(path, line, row[1:5])
            if image_id in boxes:
                raise DataError.at(path, line, f"image {image_id} given twice (first on line {where[image_id]}): "
                                               "a boxes.csv holds one box per image")
            if box[2] < box[0] or box[3] < box[1]:
                if frame == ORIGINAL:
                    raise DataError.at(path, line, f"inverted box {','.join(row[1:5])} (need x0 <= x1, y0 <= y1)")
                inverted.append(image_id)
            boxes[image_id], where[image_id] = box, line
    else:
        meta, kind, frame = {}, "plain", ORIGINAL
        for line, content in enumerate(lines[first:], start=first + 1):
            content = content.strip()
            if not content or content.startswith("#"):
                continue
            fields = re.split(r"[\s,]+", content)
            if len(fields) != 5:
                raise DataError.at(path, line, f"expected 5 fields '<image_id> x0 y0 x1 y1' separated by white space "
                                               f"or commas, got {len(fields)}: {content[:80]}")
            image_id, box = fields[0], _box_values(path, line, fields[1:])
            if box[2] < box[0] or box[3] < box[1]:
                raise DataError.at(path, line, f"inverted box {' '.join(fields[1:])} (need x0 <= x1 and y0 <= y1: "
                                               "boxes are x0 y0 x1 y1, not x y w h)")
            if image_id in boxes:
                second.append(line)
                continue
            boxes[image_id], where[image_id] = box, line
    if not boxes:
        raise DataError.at(path, None, "no box in the file")
    return BoxFile(path, kind, frame, meta or {}, boxes, where, second, inverted)


def spol_authors_name(image_id: str) -> str:
    """The SPOL authors' name of an image (keys of their ``top1top5.npy``): CUB ids are theirs as
    they are (``<class folder>/<file>.jpg``); ImageNet ``val/<file>.JPEG`` is ``<file>.JPEG``."""
    return image_id[len("val/"):] if image_id.startswith("val/") else image_id


def read_cls_results(path, image_ids: Sequence[str], *, producer: str = DEFAULT_PRODUCER) -> dict[str, tuple[bool, bool]]:
    """Per-image ``(top1_correct, top5_correct)`` for ``image_ids`` from either our
    ``predictions.csv`` or the SPOL authors' published ``top1top5.npy`` (a pickled dict
    ``name -> [top1, top5]``, e.g. ``cub200-cls/top1top5.npy``, ``imagenet-cls/top1top5.npy``; a
    pickle, so load only the authors' file or one you made).

    Every image of ``image_ids`` must have an entry (else one error naming the file, the number
    missing and the first); entries for other images are allowed (their ImageNet file also holds
    the val image SPOL leaves out). Names are matched with :func:`spol_authors_name`.
    """
    path = os.fspath(path)
    if not path.endswith(".npy"):
        preds = read_predictions(path, producer=producer)
        table = {k: (bool(p.top1_correct), bool(p.top5_correct)) for k, p in preds.items()}
        key = lambda i: i  # noqa: E731
    else:
        if not os.path.isfile(path):
            raise DataError.at(path, None, "classification results not found (the SPOL authors publish "
                                           "cub200-cls/top1top5.npy and imagenet-cls/top1top5.npy)")
        try:
            loaded = np.load(path, allow_pickle=True)
            table = loaded.item() if loaded.dtype == object and loaded.shape == () else None
        except Exception as exc:
            raise DataError.at(path, None, f"unreadable .npy ({type(exc).__name__}: {exc})") from None
        if not isinstance(table, dict):
            raise DataError.at(path, None, "expected a dict name -> [top1, top5] (the SPOL authors' top1top5.npy)")
        for name, value in table.items():
            if not (isinstance(value, (list, tuple, np.ndarray)) and len(value) == 2):
                raise DataError.at(path, None, f"entry {name!r}: expected [top1, top5], got {value!r}")
        table = {str(k): (bool(v[0]), bool(v[1])) for k, v in table.items()}
        key = spol_authors_name
    out, missing = {}, []
    for image_id in image_ids:
        value = table.get(key(image_id))
        if value is None:
            missing.append(image_id)
        else:
            out[image_id] = value
    if missing:
        raise DataError.at(path, None, f"no entry for {len(missing)} of the {len(image_ids)} images of the split "
                                       f"(first: {key(missing[0])}): it does not cover this split; "
                                       f"run {producer} on that split")
    return out


# ----------------------------------------------------------------------------- classification flags
def classification_flags(path, records, *, producer: str = DEFAULT_PRODUCER) -> dict[str, tuple[bool, bool]]:
    """Per record ``(top1_correct, top5_correct)`` from a ``predictions.csv`` (its labels checked against
    the records') or the SPOL authors' ``top1top5.npy`` (:func:`read_cls_results`). Every record needs
    an entry; rows for other images are not scored (one ``warning:`` line)."""
    path = os.fspath(path)
    image_ids = [r.image_id for r in records]
    if path.endswith(".npy"):
        return read_cls_results(path, image_ids, producer=producer)
    preds = read_predictions(path, producer=producer)
    unknown = set(preds) - set(image_ids)
    if unknown:  # e.g. predictions of a whole split evaluated with --exclude-ids: not an error
        import sys

        print(f"warning: {path}: {len(unknown)} prediction(s) for images not in the evaluated split, not "
              f"scored (e.g. {min(unknown)})", file=sys.stderr, flush=True)
    missing = [i for i in image_ids if i not in preds]
    if missing:
        others = f" (nor for {len(missing) - 1} other image(s) of the split)" if len(missing) > 1 else ""
        raise DataError.at(path, None, f"no prediction for image {missing[0]}{others}: it does not cover this split; "
                                       f"run {producer} on that split")
    flags = {}
    for r in records:
        p = preds[r.image_id]
        if p.label != r.label:
            raise DataError.at(path, None, f"label {p.label} of image {r.image_id} differs from the dataset's {r.label}")
        flags[r.image_id] = (p.top1_correct, p.top5_correct)
    return flags


# ----------------------------------------------------------------------------- score maps
SCOREMAP_PRODUCER = "the localization stage's test step (it saves one .npy score map per image)"


def scoremap_path(scoremap_dir, image_id: str) -> Path:
    """Where this repository writes the map of ``image_id``: ``<dir>/<id without extension>.npy``."""
    return Path(scoremap_dir) / (os.path.splitext(image_id)[0] + ".npy")


def choe_scoremap_path(scoremap_dir, image_id: str) -> Path:
    """Where Choe et al.'s ``inference.py`` writes it: ``np.save(<dir>/<image_id>)``, i.e. ``<dir>/<id>.npy``
    with the image's extension kept (``test/x.jpg`` -> ``test/x.jpg.npy``)."""
    return Path(scoremap_dir) / (image_id + ".npy")


def find_scoremap(scoremap_dir, image_id: str) -> Path:
    """The map file of ``image_id`` under either name (ours first); ours when neither exists."""
    ours = scoremap_path(scoremap_dir, image_id)
    if ours.is_file():
        return ours
    theirs = choe_scoremap_path(scoremap_dir, image_id)
    return theirs if theirs.is_file() else ours


def save_scoremap(scoremap_dir, image_id: str, scoremap: np.ndarray) -> None:
    """Write one map as ``<dir>/<id stem>.npy`` (atomically)."""
    atomic_save_npy(scoremap_path(scoremap_dir, image_id), scoremap)


def read_scoremap(scoremap_dir, image_id: str) -> tuple[np.ndarray, Path]:
    """``(map as stored, its file)`` of ``image_id`` under either name; a missing or unreadable file is a
    ``DataError`` naming it (the checks of its values are the evaluator's)."""
    path = find_scoremap(scoremap_dir, image_id)
    if not path.is_file():
        raise DataError.at(path, None, f"score map not found (nor {choe_scoremap_path(scoremap_dir, image_id)}, "
                                       f"Choe et al.'s name; written by {SCOREMAP_PRODUCER})")
    try:
        return np.load(path, allow_pickle=False), path
    except Exception as exc:  # truncated file, pickled object, not an .npy
        raise DataError.at(path, None, f"unreadable score map ({type(exc).__name__}: {exc})") from None
