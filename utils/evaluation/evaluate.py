"""``python -m utils.evaluation``: score a folder of saved score maps (any method's, under this
repository's file names or Choe et al.'s) against a dataset, through the same evaluator as the test
steps (:class:`utils.evaluation.evaluator.LocalizationEvaluator`), and write the results with the one
writer (:mod:`utils.evaluation.results`). Protocols, metrics, file names: [docs/evaluation.md](../../docs/evaluation.md).

    python -m utils.evaluation --data-root dataset/CUB_200_2011 --layout cub --split test \\
        --scoremaps output/spol/cub/seg/spol/scoremaps --protocol center_crop --threshold 0.2 \\
        --predictions output/spol/cub/cls/predictions.csv --output output/spol/cub/seg/eval.json
"""
from __future__ import annotations

from utils.options import evaluate_parser as get_args_parser

# python -m utils.evaluation: --help and bad options are answered before the heavy imports
ARGS = get_args_parser().parse_args() if __name__ == "__main__" else None

import os
from pathlib import Path

import numpy as np

from utils.data.layouts import load_records
from utils.errors import DataError
from utils.evaluation.evaluator import LocalizationEvaluator, checked_scoremap, require_instance_masks
from utils.evaluation.handoff import classification_flags, read_scoremap, scoremap_path  # noqa: F401  (re-exported)
from utils.evaluation.protocol import CHOICES as PROTOCOLS  # noqa: F401  (the names --protocol offers)
from utils.evaluation.protocol import get_protocol
from utils.evaluation.results import write_metrics


def load_scoremap(scoremap_dir, image_id: str, input_size: int) -> np.ndarray:
    """The checked float64 score map of ``image_id`` saved under the folder ``scoremap_dir``."""
    scoremap, path = read_scoremap(scoremap_dir, image_id)
    return checked_scoremap(scoremap, path, input_size)


def evaluate_scoremaps(records, scoremaps, protocol: str, *, cam_curve_interval: float = 0.001,
                       threshold: float | None = None, predictions=None, iou_threshold: float = 0.5,
                       iou_compare: str = ">=", inclusive_iou: bool = True, input_size: int = 224,
                       resize_size: int = 256, split: str = "", workers: int = 0) -> dict:
    """The results dict of the maps of ``records`` (utils.data.layouts.Record) saved in the folder
    ``scoremaps`` (``<id stem>.npy`` or Choe et al.'s ``<image id>.npy``).

    ``protocol``: a name of :mod:`utils.evaluation.protocol` (either spelling), at ``input_size`` /
    ``resize_size``. ``threshold``: the box threshold of GT-known / Top-k Loc (required for the SPOL
    protocols; for "resize" None = the best threshold of the IoU-50 largest-contour sweep).
    ``predictions``: the path of a predictions.csv or of the SPOL authors' top1top5.npy (adds top1_loc /
    top5_loc). ``workers`` > 1 reads and scores the maps in that many processes. Maps held in memory
    go to :class:`utils.evaluation.evaluator.LocalizationEvaluator` directly.
    """
    if not isinstance(scoremaps, (str, os.PathLike)):
        raise TypeError(f"scoremaps must be the path of a folder of saved maps, got {type(scoremaps).__name__}: "
                        "maps in memory go to utils.evaluation.evaluator.LocalizationEvaluator.accumulate")
    records = list(records)
    proto = get_protocol(protocol, input_size, resize_size)
    flags = None if predictions is None else classification_flags(predictions, records)
    with LocalizationEvaluator(records, proto, threshold=threshold, flags=flags, cam_curve_interval=cam_curve_interval,
                               iou_threshold=iou_threshold, iou_compare=iou_compare, inclusive_iou=inclusive_iou,
                               split=split, workers=workers) as evaluator:
        for record in records:
            evaluator.accumulate_saved(record.image_id, scoremaps)
        return evaluator.compute().metrics


def evaluate_instance_masks(records, scoremaps, protocol: str = "resize", *, cam_curve_interval: float = 0.001,
                            threshold: float | None = None, predictions=None, input_size: int = 224,
                            resize_size: int = 256, split: str = "", workers: int = 0, **box_options) -> dict:
    """PxAP of the maps saved in the folder ``scoremaps`` against instance masks (OpenImages30k), as Choe
    et al.'s ``MaskEvaluator``: :func:`evaluate_scoremaps` on records that all have instance masks.
    ``threshold`` and ``predictions`` (box metrics) are refused; ``box_options`` (IoU threshold,
    comparison, convention) are accepted and unused, so that one call serves every layout."""
    records = list(records)
    if not any(getattr(r, "instance_mask_paths", ()) for r in records):
        require_instance_masks(records, split)  # else the evaluator checks every record
    return evaluate_scoremaps(records, scoremaps, protocol, cam_curve_interval=cam_curve_interval, threshold=threshold,
                              predictions=predictions, input_size=input_size, resize_size=resize_size, split=split,
                              workers=workers)


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
    print(write_metrics(args.output, results), end="")
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
