"""The ``--out`` folder of ``python -m localize``: what it may hold, and the files written into it.

Layout (every file written atomically, ``utils.io``)::

    boxes.csv                      image,x0,y0,x1,y1,score[,class[,class_name]]  (original pixels)
    predictions.json               the run, its options, the threshold and why, device, version,
                                   the images skipped, and every image's files
    maps/<image>.npy               the score map at the network's input size (not for sltnet-final)
    pictures/<image>.png           the image with the map over it (resized to the image) and the box

``<image>`` is the image's path under ``--images`` with its extension (``birds/a.jpg`` ->
``maps/birds/a.jpg.npy``): two images of one name and another extension stay apart, and Choe et al.'s
evaluator names its maps the same way.

The folder must be new, empty, or hold only what an earlier ``python -m localize`` wrote there (its
``predictions.json`` lists every file): anything else is refused with one line before any work, so no
file of yours is replaced or moved. The earlier outputs are moved aside while the command runs
(``utils.engine.rundir.protect_outputs``, the test steps' mechanism): put back as they were if it
fails or is stopped (Ctrl-C), dropped once it has written the new ones; after a SIGKILL the next
command puts them back before it starts. The folder is locked against a second command meanwhile.
"""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np

from utils.errors import DataError
from utils.paths import check_output_path

WRITTEN_BY = "python -m localize"
OUTPUTS = ("boxes.csv", "predictions.json", "maps", "pictures")
MAX_PENDING = 32   # pictures waiting to be written
OURS = re.compile(r"^(\.lock|\.previous\.\d+|\..+\.[a-z0-9_]{8}\.tmp)$")   # utils.engine.rundir's, utils.io's


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def listed_files(out: Path) -> set[str] | None:
    """The files an earlier ``python -m localize`` wrote in ``out`` (from its predictions.json), or None
    when the folder holds no predictions.json of it."""
    try:
        previous = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(previous, dict) or previous.get("written_by") != WRITTEN_BY:
        return None
    files = {"boxes.csv", "predictions.json"}
    for item in previous.get("outputs") or ():
        if isinstance(item, dict):
            files.update(str(item[k]) for k in ("map", "picture") if item.get(k))
    return files


def interrupted(out: Path) -> bool:
    """Whether ``out`` holds the outputs a ``python -m localize`` moved aside and could not put back (it
    was killed): a ``.previous.<PID>`` folder of ``utils.engine.rundir.protect_outputs`` whose ``.names``
    (the outputs it moved, tab-separated; then those it found absent) are exactly :data:`OUTPUTS`.
    The next command's ``protect_outputs`` puts them back before it starts."""
    for backup in out.glob(".previous.*"):
        try:
            lines = (backup / ".names").read_text(encoding="utf-8").split("\n")
        except OSError:
            continue
        if {n for line in lines[:2] for n in line.split("\t") if n} == set(OUTPUTS):
            return True
    return False


def check_out(out, images) -> Path:
    """Before any work: ``--out`` can be written (``utils.paths.check_output_path``), lies neither inside
    the ``--images`` folder nor around it, and holds nothing this command did not write. One
    ``DataError`` line naming the folder (and the first file that is not the command's)."""
    out = check_output_path(out, "--out")
    real, images_real = os.path.realpath(out), os.path.realpath(images)
    if _inside(real, images_real):
        raise DataError.at(out, None, f"--out lies inside the --images folder {images}: its pictures would be read "
                           "as images the next time; choose another --out")
    if _inside(images_real, real):
        raise DataError.at(out, None, f"--out holds the --images folder {images}: choose another --out")
    if not out.is_dir():
        return out
    entries = sorted(p.name for p in out.iterdir())
    mine = [name for name in entries if not OURS.match(name)]
    if not mine:
        return out
    if interrupted(out):   # what a killed command left: its own outputs, half written, and its backup
        foreign = [name for name in mine if name not in OUTPUTS]
    else:
        listed = listed_files(out)
        foreign = [name for name in mine if name not in OUTPUTS] if listed is not None else mine
        if listed is not None and not foreign:
            for folder in ("maps", "pictures"):
                if (out / folder).is_dir() and not (out / folder).is_symlink():
                    foreign += sorted(p.relative_to(out).as_posix() for p in (out / folder).rglob("*")
                                      if not p.is_dir() and p.relative_to(out).as_posix() not in listed
                                      and not OURS.match(p.name))   # a temporary file of utils.io: ours
                elif (out / folder).exists():
                    foreign.append(folder)
    if foreign:
        raise DataError.at(out, None, f"--out holds files this command did not write (e.g. {foreign[0]}): "
                           "use a new or empty folder (nothing in it is replaced or moved)")
    return out


def relative_output(folder: str, name: str, suffix: str) -> str:
    """``maps/<name><suffix>`` for an image name (a path under --images, with its extension)."""
    return f"{folder}/{name}{suffix}"


class Writer:
    """The per-image files (on the loop's consumer thread, a few at once) and, at the end, boxes.csv
    and predictions.json."""

    def __init__(self, out: Path, protocol, *, maps: bool = True):
        from utils.engine.inference import file_writers

        self.out, self.protocol, self.maps = Path(out), protocol, maps
        self.pool = file_writers()
        self.pending: list = []

    def files_of(self, name: str) -> dict:
        """The files written for the image ``name``, relative to the folder."""
        item = {"image": name, "picture": relative_output("pictures", name, ".png")}
        if self.maps:
            item["map"] = relative_output("maps", name, ".npy")
        return item

    def image(self, entry) -> None:
        """Submit the map and the picture of one image (``localize.api.Entry`` with its original pixels)."""
        item = self.files_of(entry.name)
        while len(self.pending) >= MAX_PENDING:   # originals in memory: a few batches' worth at most
            self.pending.pop(0).result()
        self.pending.append(self.pool.submit(self._write, item, entry.scoremap, entry.original, entry.box,
                                             entry.size))

    def _write(self, item, scoremap, original, box, size) -> None:
        from utils.evaluation.visualize import RED, draw_boxes, overlay_scoremap
        from utils.io import atomic_save_npy, atomic_save_png

        if "map" in item:
            atomic_save_npy(self.out / item["map"], scoremap)
        picture = original
        if scoremap is not None:
            picture = overlay_scoremap(original, self.protocol.map_to_image(scoremap, size))
        if np.any(box):
            picture = draw_boxes(picture, np.asarray(box)[None], RED)
        atomic_save_png(self.out / item["picture"], np.ascontiguousarray(picture))

    def wait(self) -> None:
        """Every submitted file written (an error of one raised here)."""
        for future in self.pending:
            future.result()
        self.pending = []
        self.pool.shutdown(wait=True)

    def finish(self, result, description: dict) -> None:
        """boxes.csv and predictions.json, once every image's files are written (:meth:`wait`, on every
        rank under torchrun; this on rank 0)."""
        from utils.io import atomic_write, atomic_write_json

        header = ["image", "x0", "y0", "x1", "y1", "score"]
        if result.classes is not None:
            header.append("class")
            if result.class_names is not None:
                header.append("class_name")
        with atomic_write(self.out / "boxes.csv", "w") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            for i, name in enumerate(result.names):
                row = [name, *(f"{round(float(v), 2):g}" for v in result.boxes[i]), f"{result.scores[i]:.4f}"]
                if result.classes is not None:
                    row.append(result.classes[i])
                    if result.class_names is not None:
                        row.append(result.class_names[i])
                writer.writerow(row)
        description = {**description, "outputs": [self.files_of(name) for name in result.names]}
        atomic_write_json(self.out / "predictions.json", description)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


__all__ = ["WRITTEN_BY", "OUTPUTS", "check_out", "listed_files", "Writer"]
