"""``python -m localize``: the command line's work (:func:`main`) and its one-line errors (:func:`cli`).

Images: every JPEG / PNG (and BMP, as the dataset readers) under ``--images``, sub-folders included
(hidden files and folders left out, symbolic links to folders not followed), in sorted order, each
named by its path under ``--images``. An image that cannot be read is one ``warning:`` line naming it
and the others go through; the number skipped is said at the end, and the exit status is 0 when at
least one image went through. When none could be read the command ends with one ``error:`` line,
exit status 2, and ``--out`` as it was.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from localize.outputs import OUTPUTS, WRITTEN_BY, Writer, check_out
from localize.runs import check_source
from utils.errors import DataError

BOX_CONVENTION = ("x0,y0,x1,y1 in pixels of the original image as stored (EXIF orientation not applied), "
                  "from the input geometry's box by utils.evaluation.protocol (to_image_box); 0,0,0,0 = no box")


def find_images(folder: Path) -> list[str]:
    """The image files under ``folder`` (see the module docstring), as sorted paths relative to it."""
    from utils.data.layouts import IMAGE_EXTENSIONS

    names = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                names.append((Path(root) / name).relative_to(folder).as_posix())
    return sorted(names)


def version() -> str:
    """This repository's version (its installed metadata, else pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError, version as installed

    try:
        return installed("wsol-spol-sltnet")
    except PackageNotFoundError:
        import re

        from utils.paths import REPO_ROOT

        found = re.search(r'^version = "([^"]+)"', (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.M)
        return found.group(1) if found else "unknown"


def main(args):
    """Localize every image of ``args.images`` into ``args.out``; returns the ``localize.api.Result``.
    Under torchrun every rank localizes its share of the images and writes their maps and pictures;
    rank 0 writes boxes.csv and predictions.json."""
    check_source(args.run, args.checkpoint)
    images = Path(args.images)
    if not images.is_dir():
        raise DataError.at(images, None, "--images: not found" if not images.exists() else
                           "--images: is a file; --images names a folder of images")
    names = find_images(images)
    if not names:
        raise DataError.at(images, None, "--images: no JPEG or PNG image in it or its sub-folders")
    out = check_out(args.out, images)
    created = not out.exists()

    import torch
    from tqdm import tqdm

    from localize.api import load_localizer
    from utils.engine import rundir
    from utils.engine.distributed import barrier, cleanup

    localizer = load_localizer(args.run, checkpoint=args.checkpoint, kind=args.kind,
                               classifier_run=args.classifier_run, threshold=args.threshold, protocol=args.protocol,
                               backbone=args.backbone, output_stride=args.output_stride, dataset=args.dataset,
                               input_size=args.input_size, resize_size=args.resize_size, device=args.device,
                               batch_size=args.batch_size, amp=args.amp, workers=args.workers,
                               say=lambda line: print(line, flush=True))
    ctx = localizer.ctx
    if ctx.is_main:
        print(f"localize: {len(names)} images in {images} -> {out}", flush=True)
    barrier(ctx)   # every rank has checked --out before rank 0 moves anything
    backup = rundir.protect_outputs(out, OUTPUTS, ctx)
    writer = Writer(out, localizer.protocol, maps=localizer.kind != "sltnet-final")
    done = False
    try:
        result = localizer.run([images / n for n in names], names, on_error="skip", on_image=writer.image,
                               warn=lambda line: tqdm.write(line, file=sys.stderr), keep_maps=False, originals=True)
        writer.wait()
        if not len(result):
            raise DataError.at(images, None, f"none of its {len(names)} images could be read (each named above): "
                               f"nothing was written in {out}")
        barrier(ctx)   # every rank's maps and pictures are written
        if ctx.is_main:
            writer.finish(result, {
                "written_by": WRITTEN_BY, "version": version(), "torch": torch.__version__,
                "options": dict(vars(args)), **localizer.describe(), "processes": ctx.world_size,
                "box_convention": BOX_CONVENTION, "images": os.fspath(images.resolve()), "num_images": len(names),
                "num_localized": len(result), "num_skipped": len(result.skipped),
                "skipped": [{"image": n, "error": e} for n, e in result.skipped]})
        done = True
    finally:
        writer.close()
        if backup is not None:   # rank 0
            if done:
                rundir.drop_outputs(backup)
            else:
                rundir.restore_outputs(out, backup)
            rundir.unlock_dir(out)
            if not done and created:
                _remove_if_only_lock(out)
    if ctx.is_main:
        print(f"localize: {len(result)} of {len(names)} images localized, {len(result.skipped)} skipped "
              f"-> {out / 'boxes.csv'}", flush=True)
    cleanup(ctx)
    return result


def _remove_if_only_lock(out: Path) -> None:
    """A folder this command created and that holds nothing but its lock file is removed: a failed
    command leaves no empty --out behind."""
    from utils.engine.rundir import LOCK_NAME

    try:
        if [p.name for p in out.iterdir()] == [LOCK_NAME]:
            (out / LOCK_NAME).unlink()
            out.rmdir()
    except OSError:
        pass


def cli(args) -> None:
    """``main`` with the project's endings: bad input (a folder that is no run, an unreadable file, a
    checkpoint of another network, an ``--out`` holding files of yours, no image read) is one ``error:``
    line and exit status 2; Ctrl-C one line and 130 (``--out`` as it was before)."""
    from utils.config import report_error

    try:
        main(args)
    except DataError as exc:
        report_error(exc)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        report_error(DataError.at(args.out, None, "interrupted (Ctrl-C): --out is as it was before; the same "
                                  "command runs it again"))
        raise SystemExit(130) from None
