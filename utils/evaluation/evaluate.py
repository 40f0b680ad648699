"""Evaluate saved score maps: GT-known / Top-1 / Top-5 Loc, MaxBoxAcc, MaxBoxAccV2, PxAP.

The evaluator runs on saved score maps alone, so any method's maps are scored by the same code.
Score maps: 2-D ``.npy`` files, values in [0, 1], at the protocol's input size (224 x 224 by
default), found under ``<DIR>`` by either name (:func:`find_scoremap`):

* ours: ``<DIR>/<image id without extension>.npy`` (e.g. ``test/x.npy`` for id ``test/x.jpg``);
* Choe et al.'s (wsolevaluation's ``inference.py`` saves ``np.save(<scoremap_root>/<image_id>)``):
  ``<DIR>/<image id>.npy``, the extension kept (``test/x.jpg.npy``), sub-folders included.

Their maps are scored as they are (no renaming, no renormalisation). A missing or malformed map is
an error naming the file (never skipped).

Protocols (``utils.evaluation.protocol``; the command line accepts both spellings):

* ``resize`` (``wsol``, Choe et al., CVPR 2020): the whole image resized to input x input; GT boxes
  with their ``resize_bbox`` truncation; threshold sweep ``np.arange(0, 1, interval)``; Choe's box
  rule (uint8 map > int(t * max), RETR_TREE); inclusive IoU. GT-known Loc is taken at the best
  threshold of the IoU-50 largest-contour sweep, or at ``--threshold`` (chosen on a held-out
  split, as Choe et al. recommend).
* ``center_crop`` (``spol``, SPOL's test step, the authors' computation with our fixes): resize
  256 x 256, centre crop 224; GT boxes clipped to the image (W - 1, H - 1) then to [0, 224] in the
  crop, as the authors' albumentations pipeline does (``CenterCrop.gt_boxes``); a fixed absolute
  threshold (``--threshold``, required: SPOL's are in ``configs/spol_*.yaml``, 0.2 CUB, 0.8
  ImageNet) with SPOL's box rule (float32 map > t, RETR_TREE, largest contour,
  ``[x, y, x + w, y + h]``: ``utils.evaluation.boxes.spol_box``); the authors' IoU (exclusive,
  ``utils.evaluation.metrics.spol_iou``). Fixes: every image is counted (no contour, or no GT box left in the
  crop = a miss) and IoU ``>=`` 0.5 by default.
* ``spol_official`` (``spol-official``): the authors' accuracy exactly: images with no contour or no
  GT box left are SKIPPED (left out of the denominator; ``num_skipped`` says how many) and IoU
  ``inter / (union + 1e-12) > 0.5`` (always, whatever ``--iou-compare`` says). Both SPOL protocols
  list every image's IoU / hit / skip reason (``per_image``).

Every protocol also reports MaxBoxAcc / MaxBoxAccV2 (Choe's sweep over the same maps, the
protocol's GT boxes) and PxAP when the records have GT masks (CUB segmentations: any pixel > 0
is foreground, i.e. marked by at least one annotator).

OpenImages30k (``--layout openimages``, records with instance masks): PxAP and its precision /
recall curve only, computed as Choe et al.'s ``MaskEvaluator`` does (:func:`evaluate_instance_masks`:
the ``resize`` protocol, GT = union of the instance masks, ignored pixels left out of the negatives);
their protocol has no boxes there, so no box metric is computed and the results say so.

A map with no pixel above a threshold: MaxBoxAcc / MaxBoxAccV2 keep Choe et al.'s placeholder box
``[0, 0, 0, 0]`` and compute its IoU like any box, so it is a HIT when a ground-truth box sits in the
top-left corner (kept for equality with their numbers); GT-known / Top-k Loc count such an image as
a MISS (``LocalizationMeter`` drops the placeholder; the SPOL protocols never compute its IoU).

Commands::

    python -m utils.evaluation --data-root dataset/CUB_200_2011 --layout cub --split test \\
        --scoremaps output/spol/cub/seg/scoremaps --protocol center_crop --threshold 0.2 \\
        --predictions output/spol/cub/cls/predictions.csv --output output/spol/cub/seg/eval.json
    python -m utils.evaluation --data-root dataset/ILSVRC --layout metadata --metadata-root metadata/ILSVRC \\
        --split val --scoremaps DIR --protocol resize --workers 8 --output val.json

``--workers N`` evaluates images in N processes (same numbers, any N).
"""
from __future__ import annotations

from utils.options import evaluate_parser as get_args_parser

# python -m utils.evaluation: --help and bad options are answered before the heavy imports
ARGS = get_args_parser().parse_args() if __name__ == "__main__" else None

import multiprocessing as mp
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from utils.data.layouts import load_records
from utils.errors import DataError
from utils.io import atomic_write_json, atomic_write_text
from utils.evaluation.metrics import (BoxAccumulator, PxAPAccumulator, best_iou_per_threshold,
                           cam_threshold_list, check_scoremap_validity)
from utils.evaluation.handoff import read_cls_results, read_predictions
from utils.evaluation.masks import instance_ground_truth
from utils.evaluation.protocol import CHOICES as PROTOCOLS
from utils.evaluation.protocol import get_protocol
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


def load_scoremap(source, image_id: str, input_size: int) -> np.ndarray:
    """The checked float64 score map of ``image_id`` from a directory, a mapping or a callable."""
    if isinstance(source, (str, os.PathLike)):
        path = find_scoremap(source, image_id)
        if not path.is_file():
            raise DataError.at(path, None, f"score map not found (nor {choe_scoremap_path(source, image_id)}, "
                                           f"Choe et al.'s name; written by {SCOREMAP_PRODUCER})")
        try:
            scoremap = np.load(path, allow_pickle=False)
        except Exception as exc:  # truncated file, pickled object, not an .npy
            raise DataError.at(path, None, f"unreadable score map ({type(exc).__name__}: {exc})") from None
    else:
        path = f"<score map of {image_id}>"
        if isinstance(source, Mapping):
            if image_id not in source:
                raise DataError.at(path, None, "no score map given for this image")
            scoremap = source[image_id]
        else:
            scoremap = source(image_id)
        if hasattr(scoremap, "detach"):
            scoremap = scoremap.detach().cpu().numpy()
    check_scoremap_validity(scoremap, path)
    if scoremap.shape != (input_size, input_size):
        raise DataError.at(path, None, f"score map shape {scoremap.shape} differs from the protocol input "
                                       f"size ({input_size}, {input_size})")
    return scoremap.astype(np.float64)  # Choe et al. evaluate float64 maps (t2n)


class _ImageJob:
    """Per-image work, picklable so that worker processes can run it."""

    def __init__(self, source, protocol, cam_curve_interval, fixed_threshold, with_masks):
        self.source, self.protocol = source, protocol
        self.input_size = protocol.input_size
        self.cam_curve_interval = cam_curve_interval
        self.thresholds = cam_threshold_list(cam_curve_interval)
        self.fixed_threshold, self.with_masks = fixed_threshold, with_masks

    def gt_boxes(self, record):
        return self.protocol.gt_boxes(record.boxes, record.size)

    def fixed_boxes(self, scoremap, threshold):
        return self.protocol.box(scoremap, threshold)  # [0, 0, 0, 0] = no box

    def sweep(self, record):
        scoremap = load_scoremap(self.source, record.image_id, self.input_size)
        gt = self.gt_boxes(record)
        ious = best_iou_per_threshold(scoremap, gt, self.thresholds, (False, True))
        out = {"largest": ious[False], "multi": ious[True]}
        if self.fixed_threshold is not None:
            out["boxes"] = self.fixed_boxes(scoremap, self.fixed_threshold)
        if self.with_masks:
            px = PxAPAccumulator(self.cam_curve_interval)
            px.accumulate(scoremap, self.protocol.gt_mask(record), path=record.mask_path)
            out["px"] = px.state()
        return out

    def boxes_at(self, record_threshold):
        record, threshold = record_threshold
        return self.fixed_boxes(load_scoremap(self.source, record.image_id, self.input_size), threshold)


class _Runner:
    """Maps a function over records in this process, or in a pool of ``workers`` processes
    (results come back in order). The workers start from a fork server, not by forking this
    process: a process that has run both torch and OpenCV's thread pool (e.g. a large cv2.resize)
    leaves that pool unusable in a forked child, whose first cv2 call then hangs."""

    def __init__(self, workers: int):
        self.pool = None
        if workers and workers > 1:
            method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
            self.pool = mp.get_context(method).Pool(workers, initializer=_worker_init)

    def map(self, fn, items):
        if self.pool is None:
            return map(fn, items)
        return self.pool.imap(fn, items, chunksize=8)

    def close(self, failed: bool = False):
        if self.pool is not None:
            if failed:
                self.pool.terminate()  # do not finish the remaining images after an error
            else:
                self.pool.close()
            self.pool.join()


def _worker_init():
    import cv2
    cv2.setNumThreads(1)


def evaluate_scoremaps(records, scoremaps, protocol, *, cam_curve_interval: float = 0.001,
                       threshold: float | None = None, predictions=None, iou_threshold: float = 0.5,
                       iou_compare: str = ">=", inclusive_iou: bool = True, input_size: int = 224,
                       resize_size: int = 256, split: str = "", workers: int = 0) -> dict:
    """Evaluate score maps of ``records`` (list of utils.data.layouts.Record) and return the results dict.

    ``protocol``: a name of :mod:`utils.evaluation.protocol` (either spelling) or a protocol object (then
    ``input_size``/``resize_size`` are its own). ``scoremaps``: a directory of ``<id stem>.npy``
    (or Choe et al.'s ``<image id>.npy``) files, a mapping ``image_id -> map`` or a
    callable ``image_id -> map`` (2-D, [0, 1], input_size x input_size). ``threshold``: the box
    threshold for GT-known / Top-k Loc (required for the SPOL protocols; for "resize" None = the best threshold
    of the IoU-50 largest-contour sweep). ``predictions``: a ``read_predictions`` dict or a path to
    predictions.csv (adds top1_loc / top5_loc). ``workers`` > 1 uses processes (directory only).
    """
    records = list(records)
    if any(getattr(r, "instance_mask_paths", ()) for r in records):  # OpenImages30k: masks, no boxes
        return evaluate_instance_masks(records, scoremaps, protocol, cam_curve_interval=cam_curve_interval,
                                       threshold=threshold, predictions=predictions, input_size=input_size,
                                       resize_size=resize_size, split=split, workers=workers)
    protocol = get_protocol(protocol, input_size, resize_size)
    input_size = protocol.input_size
    iou_compare = protocol.iou_compare or iou_compare  # spol_official: the authors' '>', whatever was asked
    if protocol.needs_threshold and threshold is None:
        raise ValueError(f"protocol '{protocol.name}' needs a fixed threshold (--threshold; SPOL's: "
                         "configs/spol_*.yaml seg_test.spol_threshold, 0.2 CUB, 0.8 ImageNet)")
    records = list(records)
    if not records:
        raise ValueError("no records to evaluate")
    flags = None
    if predictions is not None:
        if isinstance(predictions, (str, os.PathLike)) and os.fspath(predictions).endswith(".npy"):
            predictions = read_cls_results(predictions, [r.image_id for r in records])  # authors' file
        preds = read_predictions(predictions) if isinstance(predictions, (str, os.PathLike)) else predictions
        where = predictions if isinstance(predictions, (str, os.PathLike)) else "<predictions>"
        flags = []
        unknown = set(preds) - {r.image_id for r in records}
        if unknown:  # e.g. predictions of a whole split evaluated with --exclude-ids: not an error
            import sys

            print(f"warning: {where}: {len(unknown)} prediction(s) for images not in the evaluated split, not "
                  f"scored (e.g. {min(unknown)})", file=sys.stderr, flush=True)
        for r in records:
            p = preds.get(r.image_id)
            if p is None:
                raise DataError.at(where, None, f"no prediction for image {r.image_id}")
            if isinstance(p, tuple):  # (top1, top5) flags, e.g. from the authors' top1top5.npy
                flags.append((bool(p[0]), bool(p[1])))
                continue
            if p.label != r.label:
                raise DataError.at(where, None, f"label {p.label} of image {r.image_id} differs from the dataset's {r.label}")
            flags.append((p.top1_correct, p.top5_correct))
    if workers and workers > 1 and not isinstance(scoremaps, (str, os.PathLike)):
        workers = 0  # in-memory maps stay in this process
    thresholds = cam_threshold_list(cam_curve_interval)
    with_masks = all(r.mask_path is not None for r in records)
    job = _ImageJob(scoremaps, protocol, cam_curve_interval, threshold, with_masks)

    maxboxacc = BoxAccumulator(cam_curve_interval, iou_thresholds=(50,), multi_contour=False)
    v2 = BoxAccumulator(cam_curve_interval, iou_thresholds=(30, 50, 70), multi_contour=True)
    pxap = PxAPAccumulator(cam_curve_interval) if with_masks else None
    fixed = []
    runner = _Runner(workers)
    failed = True
    try:
        for out in runner.map(job.sweep, records):
            maxboxacc.accumulate_ious(out["largest"])
            v2.accumulate_ious(out["multi"])
            if pxap is not None:
                pxap.merge(out["px"])
            if "boxes" in out:
                fixed.append(out["boxes"])
        box = maxboxacc.compute()
        box_v2 = v2.compute()
        best_threshold = box["best_threshold"][50]
        threshold_used = best_threshold if threshold is None else float(threshold)
        if threshold is None:  # second pass: boxes at the sweep's best threshold
            fixed = list(runner.map(job.boxes_at, [(r, threshold_used) for r in records]))
        failed = False
    finally:
        runner.close(failed)

    loc, outcomes = protocol.score(fixed, [job.gt_boxes(r) for r in records], flags, iou_threshold=iou_threshold,
                                   iou_compare=iou_compare, inclusive_iou=inclusive_iou)

    results = {"protocol": protocol.label, "split": split, "num_images": len(records),
               "gt_known_loc": loc["gt_known_loc"]}
    if flags is not None:
        results["top1_loc"], results["top5_loc"] = loc["top1_loc"], loc["top5_loc"]
    if outcomes is not None:
        results["num_counted"], results["num_skipped"] = loc["num_counted"], loc["num_skipped"]
        results["num_skipped_by_reason"] = {
            why: sum(o["skipped"] == why for o in outcomes) for why in ("no contour", "no GT box in the crop")}
        results["per_image"] = [{"image_id": r.image_id, "iou": o["iou"], "hit": o["hit"], "skipped": o["skipped"]}
                                for r, o in zip(records, outcomes)]
    results.update({
        "maxboxacc": box["max_box_acc"][50],
        "maxboxacc_v2": box_v2["mean_max_box_acc"],
        "maxboxacc_v2_per_iou": {str(k): v for k, v in box_v2["max_box_acc"].items()},
    })
    if pxap is not None:
        px = pxap.compute()
        results["pxap"] = px["pxap"]
    results.update({
        "best_threshold": best_threshold,
        "best_threshold_v2_per_iou": {str(k): v for k, v in box_v2["best_threshold"].items()},
        "threshold_used": threshold_used,
        "threshold_source": "fixed" if threshold is not None else "best of the IoU-50 sweep on this split",
        "iou_threshold": iou_threshold, "iou_compare": iou_compare,
        "iou_convention": ("exclusive (SPOL authors' IoU)" if not protocol.inclusive_iou
                           else "inclusive" if inclusive_iou else "exclusive"),
        "cam_curve_interval": cam_curve_interval, "input_size": input_size,
        "resize_size": protocol.meta()["resize_size"],
        "num_images_without_gt_box": int(sum(len(job.gt_boxes(r)) == 0 for r in records)),
        "curves": {"thresholds": [float(t) for t in thresholds],
                   "maxboxacc_iou50": box["curve"][50].tolist(),
                   "maxboxacc_v2": {str(k): c.tolist() for k, c in box_v2["curve"].items()}},
    })
    if pxap is not None:
        # precision is undefined (null) at thresholds above every score
        results["curves"]["pxap_precision"] = [None if np.isnan(v) else float(v) for v in px["precision"]]
        results["curves"]["pxap_recall"] = px["recall"].tolist()
    return results


BOX_METRICS_NOT_COMPUTED = ("not computed: OpenImages30k has instance masks and no boxes in Choe et al.'s "
                            "protocol, which scores it with PxAP alone")


class _MaskJob:
    """Per-image PxAP histograms of an image with instance masks (picklable, for worker processes)."""

    def __init__(self, source, input_size: int, cam_curve_interval: float):
        self.source, self.input_size, self.cam_curve_interval = source, input_size, cam_curve_interval

    def __call__(self, record) -> tuple[dict, bool, int]:
        scoremap = load_scoremap(self.source, record.image_id, self.input_size)
        foreground, ignore = instance_ground_truth(record, self.input_size)
        px = PxAPAccumulator(self.cam_curve_interval)
        px.accumulate(scoremap, foreground, ignore, path=record.instance_mask_paths[0])
        return px.state(), bool(foreground.any()), int(ignore.sum())


def evaluate_instance_masks(records, scoremaps, protocol="resize", *, cam_curve_interval: float = 0.001,
                            threshold: float | None = None, predictions=None, input_size: int = 224,
                            resize_size: int = 256, split: str = "", workers: int = 0, **box_options) -> dict:
    """PxAP of score maps against instance masks (OpenImages30k), as Choe et al.'s ``MaskEvaluator``.

    Every record needs ``instance_mask_paths`` (:mod:`utils.data.layouts`, "openimages"). Per image:
    the map (``input_size`` square, scored as it is, like theirs: their ``normalize_scoremap`` runs
    in their inference, not in the evaluator), the union of the instance masks and the ignore region
    (:func:`utils.evaluation.masks.instance_ground_truth`) go into one
    :class:`utils.evaluation.metrics.PxAPAccumulator` (histograms on ``np.arange(0, 1, interval)``
    + [1, 2, 3]; AP = sum of precision x recall steps). Only the ``resize`` protocol (theirs: whole
    image at ``input_size``) is accepted; ``threshold`` and ``predictions`` (box metrics) are refused;
    ``box_options`` (IoU threshold, comparison, convention) are accepted and unused, so one call
    serves every layout. Returns ``pxap`` (percent), ``box_metrics`` (why there are none) and the
    curve: ``curves.pxap_thresholds[i]`` is the score threshold (``score >= t``) at which
    ``pxap_precision[i]`` (None where nothing scores that high) and ``pxap_recall[i]`` hold.
    """
    protocol = get_protocol(protocol, input_size, resize_size)
    if protocol.crops:
        raise ValueError(f"protocol '{protocol.label}': PxAP on instance masks (OpenImages30k) is Choe et al.'s "
                         "MaskEvaluator, on the whole image resized: use --protocol wsol (resize)")
    if threshold is not None or predictions is not None:
        raise ValueError("--threshold / --predictions are for box metrics (GT-known, Top-1/5 Loc), which are not "
                         "computed on OpenImages30k: it has instance masks and no boxes in Choe et al.'s protocol")
    records = list(records)
    if not records:
        raise ValueError("no records to evaluate")
    for r in records:
        if not getattr(r, "instance_mask_paths", ()):
            raise DataError.at(r.path, msg=f"image {r.image_id} has no instance mask (split '{split}': PxAP needs "
                                           "the masks of <split>/localization.txt; OpenImages30k's train split has "
                                           "image-level labels only)")
    if workers and workers > 1 and not isinstance(scoremaps, (str, os.PathLike)):
        workers = 0  # in-memory maps stay in this process
    job = _MaskJob(scoremaps, protocol.input_size, cam_curve_interval)
    pxap = PxAPAccumulator(cam_curve_interval)
    without_foreground, ignored = 0, 0
    runner = _Runner(workers)
    failed = True
    try:
        for state, has_foreground, num_ignored in runner.map(job, records):
            pxap.merge(state)
            without_foreground += not has_foreground
            ignored += num_ignored
        failed = False
    finally:
        runner.close(failed)
    px = pxap.compute()
    edges = pxap.threshold_list_right_edge  # thresholds + [1, 2, 3]; curve entry i counts scores >= edges[-2 - i]
    return {
        "protocol": protocol.label, "split": split, "num_images": len(records),
        "pxap": px["pxap"], "box_metrics": BOX_METRICS_NOT_COMPUTED,
        "num_images_without_foreground": without_foreground, "num_ignored_pixels": ignored,
        "cam_curve_interval": cam_curve_interval, "input_size": protocol.input_size,
        "curves": {"pxap_thresholds": [float(t) for t in edges[:-1][::-1]],
                   "pxap_precision": [None if np.isnan(v) else float(v) for v in px["precision"]],
                   "pxap_recall": px["recall"].tolist()},
    }


def format_table(results: dict) -> str:
    """A readable summary of :func:`evaluate_scoremaps`'s results."""
    if "box_metrics" in results:  # instance masks (OpenImages30k): PxAP only
        rows = [("protocol", results["protocol"]), ("split", results["split"]), ("images", results["num_images"]),
                ("PxAP", f"{results['pxap']:.2f}"), ("box metrics", results["box_metrics"])]
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows) + "\n"
    rows = [("protocol", results["protocol"]), ("split", results["split"]),
            ("images", results["num_images"])]
    if results.get("num_skipped"):
        why = ", ".join(f"{n} {k}" for k, n in results.get("num_skipped_by_reason", {}).items() if n)
        rows.append(("  skipped", f"{results['num_skipped']} ({why}): counted {results['num_counted']}"))
    for key, name in (("top1_loc", "Top-1 Loc"), ("top5_loc", "Top-5 Loc"), ("gt_known_loc", "GT-known Loc")):
        if results.get(key) is not None:
            rows.append((name, f"{results[key]:.2f}"))
    rows.append(("  at threshold", f"{results['threshold_used']:.3f} ({results['threshold_source']}), "
                                   f"IoU {results['iou_compare']} {results['iou_threshold']}"))
    rows.append(("MaxBoxAcc (IoU 50)", f"{results['maxboxacc']:.2f} (best threshold {results['best_threshold']:.3f})"))
    per = results["maxboxacc_v2_per_iou"]
    rows.append(("MaxBoxAccV2", f"{results['maxboxacc_v2']:.2f} (IoU 30/50/70: "
                                + " / ".join(f"{per[k]:.2f}" for k in ("30", "50", "70")) + ")"))
    if "pxap" in results:
        rows.append(("PxAP", f"{results['pxap']:.2f}"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows) + "\n"


def check_args(args) -> None:
    """Before any work: folders and files that must exist, an ``--output`` that can be written
    (a file, outside the dataset), a threshold where the protocol needs one, a crop that fits in
    the resize. One ``DataError`` line each."""
    from utils.paths import check_output_path

    for name in ("data_root", "scoremaps"):
        if not Path(getattr(args, name)).is_dir():
            raise DataError.at(getattr(args, name), None, f"--{name.replace('_', '-')}: folder not found")
    if args.predictions and not Path(args.predictions).is_file():
        raise DataError.at(args.predictions, None, "--predictions: file not found (written by the "
                           "classification stage's test step, e.g. spol/cls/test.py)")
    protocol = get_protocol(args.protocol)
    if protocol.needs_threshold and args.threshold is None:
        raise DataError(f"--protocol {args.protocol} needs --threshold (SPOL's: 0.2 on CUB, 0.8 on ImageNet, "
                        "configs/spol_*.yaml seg_test.spol_threshold)")
    if protocol.crops and args.input_size > args.resize_size:
        raise DataError(f"--input-size {args.input_size} is larger than --resize-size {args.resize_size}: protocol "
                        f"{args.protocol} cuts the input from the resized image")
    check_output_path(args.output, "--output", folder=False)
    output = os.path.realpath(args.output)
    for name in ("data_root", "metadata_root"):
        root = getattr(args, name)
        if root and (output + os.sep).startswith(os.path.realpath(root).rstrip(os.sep) + os.sep):
            raise DataError.at(args.output, None, f"--output lies inside the dataset folder --{name.replace('_', '-')} "
                               f"{root}: results are never written into the data; choose another --output")


def main(args) -> dict:
    check_args(args)
    # no image is decoded here: each image's header is read to check the size its boxes were made for
    # (ILSVRC XML <size>, metadata image_sizes.txt) against the image itself
    records = load_records(args.data_root, args.layout, args.split, metadata_root=args.metadata_root,
                           exclude_ids=args.exclude_ids, check_sizes=True)
    evaluate = evaluate_instance_masks if args.layout == "openimages" else evaluate_scoremaps
    results = evaluate(
        records, args.scoremaps, args.protocol, cam_curve_interval=args.cam_curve_interval,
        threshold=args.threshold, predictions=args.predictions, iou_threshold=args.iou_threshold,
        iou_compare=args.iou_compare, inclusive_iou=args.iou_convention == "inclusive",
        input_size=args.input_size, resize_size=args.resize_size, split=args.split, workers=args.workers)
    results["scoremaps"] = os.path.abspath(args.scoremaps)
    table = format_table(results)
    output = Path(args.output)
    atomic_write_json(output, results)
    atomic_write_text(output.with_suffix(".txt"), table)
    print(table, end="")
    return results


def cli(argv=None, args=None) -> dict:
    """``python -m utils.evaluation``: bad input (missing data root, score map or prediction, a
    malformed file, an option out of range, an ``--output`` that cannot be written) ends with one
    ``error:`` line naming the file or option and exit status 2; Ctrl-C with one line and 130."""
    import sys

    from utils.errors import one_line

    if args is None:
        args = get_args_parser().parse_args(argv)
    try:
        return main(args)
    except (DataError, ValueError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"error: {args.output}: interrupted (Ctrl-C) before the results were written; the same command "
              "evaluates again", file=sys.stderr, flush=True)
        raise SystemExit(130) from None


if __name__ == "__main__":
    cli(args=ARGS)
