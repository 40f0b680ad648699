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


def write_boxes_csv(path, image_ids, boxes, *, meta: dict | None = None) -> None:
    """Write ``boxes.csv`` (``image_id,x0,y0,x1,y1``) atomically, and ``boxes.json`` beside it."""
    boxes = np.asarray(boxes)
    with atomic_write(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(BOXES_HEADER)
        for image_id, box in zip(image_ids, boxes):
            writer.writerow([image_id, *[f"{float(v):g}" for v in box]])
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
