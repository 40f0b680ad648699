"""``python -m utils.evaluation``: score a folder of saved score maps (any method's, under this
repository's file names or Choe et al.'s), or a file of boxes that a method predicted (``--boxes``: a
box regressor's, any method's), against a dataset, through the same evaluator as the test steps
(:class:`utils.evaluation.evaluator.LocalizationEvaluator`), and write the results with the one
writer (:mod:`utils.evaluation.results`). Protocols, metrics, file formats and the frame of a box
file: [docs/evaluation.md](../../docs/evaluation.md).

    python -m utils.evaluation --data-root dataset/CUB_200_2011 --layout cub --split test \\
        --scoremaps output/spol/cub/seg/spol/scoremaps --protocol center_crop --threshold 0.2 \\
        --predictions output/spol/cub/cls/predictions.csv --output output/spol/cub/seg/eval.json
    python -m utils.evaluation --data-root dataset/CUB_200_2011 --layout cub --split test \\
        --boxes psol_boxes.txt --protocol resize --output output/eval/psol.json
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
from utils.evaluation.evaluator import (BOX_OUTSIDE_INPUT, NO_BOX, LocalizationEvaluator, checked_scoremap,
                                        require_instance_masks)
from utils.evaluation.handoff import INPUT, BoxFile, read_box_file
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


def _warn(message: str) -> None:
    import sys

    print(f"warning: {message}", file=sys.stderr, flush=True)


def _excluded(image_id: str, exclude_ids) -> bool:
    """Whether ``--exclude-ids`` names the image (its id or its file name, as ``utils.data.layouts``)."""
    return image_id in exclude_ids or os.path.basename(image_id) in exclude_ids


def box_file_protocol(box_file: BoxFile, protocol):
    """The protocol whose input an input-frame box file's boxes are in (its ``boxes.json``), which must put
    every image where ``protocol`` does; one ``DataError`` naming the sidecar otherwise."""
    from utils.evaluation.protocol import canonical

    sidecar = box_file.path.with_suffix(".json")
    meta = box_file.meta
    try:
        written = get_protocol(canonical(meta["protocol"]), int(meta["input_size"]),
                               int(meta.get("resize_size") or protocol.resize_size))
    except (TypeError, ValueError) as exc:
        raise DataError.at(sidecar, None, f"names no geometry this evaluator knows ({exc})") from None
    if not written.same_geometry(protocol):
        raise DataError.at(sidecar, None, f"the boxes of {box_file.path.name} are in the input of protocol "
                           f"{meta['protocol']} ({written.describe()}), not of --protocol {protocol.label} "
                           f"({protocol.describe()}): evaluate with that protocol and --input-size / --resize-size")
    return written


def frame_description(box_file: BoxFile, protocol) -> str:
    """Where the coordinates of ``box_file`` are, in words (the results' ``boxes_frame``)."""
    if box_file.frame == INPUT:
        sidecar = box_file.path.with_suffix(".json").name
        return f"input pixels of {protocol.label} ({protocol.describe()}), as {sidecar} names them; scored as written"
    return (f"original image pixels, brought into the input of {protocol.label} ({protocol.describe()}) "
            "as the GT boxes are")


def evaluate_boxes(records, boxes, protocol: str, *, predictions=None, iou_threshold: float = 0.5,
                   iou_compare: str = ">=", inclusive_iou: bool = True, input_size: int = 224,
                   resize_size: int = 256, split: str = "", exclude_ids=()) -> dict:
    """The results dict of the boxes a method predicted for ``records`` (one per image), read from the file
    ``boxes`` (:func:`utils.evaluation.handoff.read_box_file`: a boxes.csv, in the protocol's input when a
    boxes.json beside it names the geometry, else in original pixels; or plain ``<image_id> x0 y0 x1 y1``
    lines in original pixels) or given as a read :class:`~utils.evaluation.handoff.BoxFile`.

    Boxes in original pixels reach the protocol's input as the GT boxes do
    (:meth:`utils.evaluation.protocol.Protocol.from_image_box`), so that the IoU compares them in one frame
    with the protocol's convention. Every image of ``records`` is counted: one without a box is a miss
    (``images_without_box``). A box for an image outside the split is an error naming the line, unless
    ``exclude_ids`` left that image out (a warning). GT-known (and, with ``predictions``, Top-1 / Top-5)
    Loc at ``iou_threshold``, and the accuracy at IoU 0.3 / 0.5 / 0.7 with their mean (``box_acc_*``;
    not MaxBoxAccV2, which needs a map's thresholds).
    """
    records = list(records)
    proto = get_protocol(protocol, input_size, resize_size)
    box_file = boxes if isinstance(boxes, BoxFile) else read_box_file(boxes)
    path = box_file.path
    if box_file.frame == INPUT:
        box_file_protocol(box_file, proto)
    by_id = {r.image_id: r for r in records}
    exclude_ids = {str(e) for e in exclude_ids}
    left_out = []
    for image_id, line in box_file.lines.items():
        if image_id in by_id:
            continue
        if _excluded(image_id, exclude_ids):
            left_out.append(image_id)
            continue
        example = f"; its ids look like {records[0].image_id}" if records else ""
        raise DataError.at(path, line, f"image {image_id} is not in split '{split}' ({len(records)} images{example})")
    for line in box_file.second_boxes[:1]:
        _warn(f"{path}: {len(box_file.second_boxes)} line(s) give an image a second box, not scored: the first box "
              f"of each image is (e.g. line {line})")
    if left_out:
        _warn(f"{path}: {len(left_out)} box(es) for images left out by --exclude-ids, not scored (e.g. {left_out[0]})")
    if box_file.inverted:
        first = box_file.inverted[0]
        _warn(f"{path}: {len(box_file.inverted)} inverted box(es) (x1 < x0 or y1 < y0), scored as written, as the "
              f"test step that wrote them did (e.g. line {box_file.lines[first]}, image {first})")
    missing = [r.image_id for r in records if r.image_id not in box_file.boxes]
    if missing:
        _warn(f"{path}: {len(missing)} of the {len(records)} images of split '{split}' have no box: each is a miss "
              f"(listed in images_without_box; e.g. {missing[0]})")
    flags = None if predictions is None else classification_flags(predictions, records)
    with LocalizationEvaluator(records, proto, flags=flags, iou_threshold=iou_threshold, iou_compare=iou_compare,
                               inclusive_iou=inclusive_iou, sweep=False, split=split) as evaluator:
        for record in records:
            box = box_file.boxes.get(record.image_id)
            if box is None:
                evaluator.accumulate_miss(record.image_id, NO_BOX)
                continue
            if box_file.frame != INPUT:
                box = proto.from_image_box(box, record.size)
                if not box.any():
                    evaluator.accumulate_miss(record.image_id, BOX_OUTSIDE_INPUT)
                    continue
            evaluator.accumulate(record.image_id, box=box)
        results = evaluator.compute().metrics
    results.update({"boxes": os.path.abspath(path), "boxes_format": box_file.kind,
                    "boxes_frame": frame_description(box_file, proto)})
    if box_file.second_boxes or left_out:
        results["boxes_not_scored"] = {"second box of an image": len(box_file.second_boxes),
                                       "image left out by --exclude-ids": len(left_out)}
    return results


def check_args(args) -> None:
    """Before any work: folders and files that must exist, an ``--output`` that can be written
    (a file, outside the dataset), a threshold where the protocol needs one, a crop that fits in
    the resize. One ``DataError`` line each."""
    from utils.paths import check_output_path

    boxes = getattr(args, "boxes", None)
    for name in ("data_root",) if boxes else ("data_root", "scoremaps"):
        if not Path(getattr(args, name)).is_dir():
            raise DataError.at(getattr(args, name), None, f"--{name.replace('_', '-')}: folder not found")
    if args.predictions and not Path(args.predictions).is_file():
        raise DataError.at(args.predictions, None, "--predictions: file not found (written by the "
                           "classification stage's test step, e.g. spol/cls/test.py)")
    protocol = get_protocol(args.protocol)
    if boxes:
        if not Path(boxes).is_file():
            raise DataError.at(boxes, None, "--boxes: file not found")
        if args.threshold is not None:
            raise DataError("--threshold boxes a score map: --boxes are scored as they are (leave out --threshold)")
        if args.layout == "openimages":
            raise DataError("--boxes: OpenImages30k has instance masks and no GT boxes in Choe et al.'s protocol "
                            "(PxAP of --scoremaps only)")
    elif protocol.needs_threshold and args.threshold is None:
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
    if getattr(args, "boxes", None):
        results = evaluate_boxes(
            records, args.boxes, args.protocol, predictions=args.predictions, iou_threshold=args.iou_threshold,
            iou_compare=args.iou_compare, inclusive_iou=args.iou_convention == "inclusive",
            input_size=args.input_size, resize_size=args.resize_size, split=args.split, exclude_ids=args.exclude_ids)
    else:
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
    """``python -m utils.evaluation``: bad input (missing data root, score map, box file or prediction, a
    malformed file or line, an option out of range, an ``--output`` that cannot be written) ends with one
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
