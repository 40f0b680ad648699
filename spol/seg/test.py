"""SPOL seg stage, test step: boxes from the segmentation model, localization accuracy, two protocols.

    python3 spol/seg/test.py --config configs/spol_cub.yaml
    torchrun --nproc_per_node 4 spol/seg/test.py --config configs/spol_cub.yaml
    python3 spol/seg/test.py --config configs/spol_cub.yaml --checkpoint PATH/TO/released_cub_seg.pth
    python3 spol/seg/test.py --config configs/spol_imagenet.yaml --checkpoint PATH/TO/released_imagenet_seg.pth

Protocols (``utils.evaluation.protocol``; ``--protocol spol|spol-official|wsol|both`` or the neutral names
``center_crop|spol_official|resize``; both = spol + wsol), each in its own folder ``<output>/<protocol
as given>/``:

* ``spol`` = ``center_crop``: the authors' accuracy computation with our fixes. Input as theirs
  (normalise, resize 256 x 256 INTER_LINEAR, centre crop 224: ``utils.data.transforms.SPOLTransform``),
  sigmoid map > 0.2 (CUB) / 0.8 (ImageNet; ``configs/spol_*.yaml`` seg_test.spol_threshold),
  RETR_TREE, largest contour, box ``[x, y, x + w, y + h]``; GT boxes clipped to W - 1 / H - 1, then
  to [0, 224] in the crop; their exclusive IoU. Fixes: every image counts (no contour or no GT box
  left = a miss), IoU ``>=`` 0.5 (``--iou-compare '>'`` is theirs).
* ``spol-official`` = ``spol_official``: exactly the authors' computation: images with no contour
  or no GT box left are skipped (``num_skipped`` in metrics.json), IoU ``> 0.5``.
* ``wsol`` = ``resize`` (Choe et al., CVPR 2020): whole image at 224 x 224, Choe's box rule at a
  threshold chosen on ``--threshold-split`` (a held-out fully supervised split, e.g. CUBV2 ``val``
  with ``--threshold-layout metadata``); without it the threshold is the best one on the test split
  itself, and metrics.json says so. Also MaxBoxAcc, MaxBoxAccV2 and PxAP (CUB masks).

Top-1/Top-5 Loc use ``--cls-results PATH``: our ``predictions.csv`` (default
``<--cls-dir>/predictions.csv``, from spol/cls/test.py) or the authors' published ``top1top5.npy``
(``cub200-cls/top1top5.npy``, ``imagenet-cls/top1top5.npy``); it must cover every image of the
split (matched by name). Each map goes from the model to the evaluator in memory
(``utils.evaluation.evaluator``), which returns the metrics with the boxes and hits it scored: no map
is read back from disk. Writes per protocol ``metrics.json``/``metrics.txt``, ``boxes.csv``/``boxes.json``,
``hits.csv`` (SPOL protocols: every image's IoU, hit, skip reason), ``grid.png`` (the first
``--grid-images`` images as the network saw them) and, with ``--scoremaps`` (the default;
``--no-scoremaps`` saves none), ``scoremaps/<id stem>.npy`` (sigmoid maps at 224 x 224, a side output:
``python -m utils.evaluation`` re-scores them to the same numbers, the exact command is in
metrics.json); and ``<output>/metrics.json``/``metrics.txt`` with both protocols and the paper's
numbers, ``<output>/test_args.yaml`` (this step's options; ``args.yaml`` beside it is the training run's).
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by its path (python3 spol/seg/test.py): the repository root first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from spol.options import seg_test_parser as get_args_parser
from utils.config import parse_early

# run as a script: --help and bad options are answered before torch loads
ARGS = parse_early(__name__, get_args_parser, "seg_test")

import os
import shlex

import torch
import torch.nn.functional as F

from spol.options import (SEG_TEST_INHERITS, dataset_name, default_path, load_split, resolve_defaults,
                          seg_test_outputs, spol_config)
from spol.model import SegModel
from spol.visualize import write_grid
from utils.data.dataset import WSOLDataset
from utils.data.transforms import to_uint8_images
from utils.engine.checkpoint import load_stage_weights
from utils.engine.distributed import all_gather_object, merged_on_main
from utils.engine.inference import file_writers, gather_lists, run_inference
from utils.engine.rundir import run_cli
from utils.engine.stage import save_args, start_run
from utils.errors import DataError
from utils.evaluation.evaluator import LocalizationEvaluator
from utils.evaluation.handoff import classification_flags, save_scoremap, write_boxes_csv
from utils.evaluation.protocol import expand as expand_protocols
from utils.evaluation.protocol import get_protocol
from utils.evaluation.results import write_metrics
from utils.engine.tensorboard import log_test_step
from utils.io import atomic_write_text
from utils.paths import require_output

PAPER = {"cub": {"top1_loc": 80.12, "top5_loc": 93.44, "gt_known_loc": 96.46},
         "imagenet": {"top1_loc": 59.14, "top5_loc": 67.15, "gt_known_loc": 69.02}}


def scoremap_step(model, batch, *, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch on the device -> ``(dataset indices [B], maps [B, size, size] float32)``: the sigmoid
    of the seg logits resized bilinearly (align_corners=True) to ``size``, still on the device."""
    logits = F.interpolate(model(batch["image"]).float(), size=(size, size), mode="bilinear", align_corners=True)
    return torch.as_tensor(batch["index"]), torch.sigmoid(logits[:, 0])


def protocol_of(args, protocol: str):
    """The :mod:`utils.evaluation.protocol` object of ``protocol`` at this run's sizes."""
    return get_protocol(protocol, args.input_size, args.resize_size)


def new_evaluator(records, protocol: str, args, *, threshold=None, flags=None, split: str):
    """The evaluator of ``records`` under ``protocol`` with this run's options."""
    return LocalizationEvaluator(records, protocol_of(args, protocol), threshold=threshold, flags=flags,
                                 cam_curve_interval=args.cam_curve_interval, iou_threshold=args.iou_threshold,
                                 iou_compare=iou_compare_of(args, protocol),
                                 inclusive_iou=args.iou_convention == "inclusive", split=split,
                                 workers=args.eval_workers)


def stream_scoremaps(model, records, protocol: str, evaluator, args, ctx, *, maps_dir: Path | None = None,
                     keep: int = 0) -> list:
    """This rank's share of the records through the model, each map handed to ``evaluator`` in memory
    (and saved as ``maps_dir/<id stem>.npy`` when ``maps_dir`` is given), at the protocol geometry (its
    own transform: the authors' pipeline for the SPOL protocols, torchvision's for resize). Returns
    ``[(index, map, uint8 image as the network saw it)]`` of the records with index < ``keep``."""
    dataset = WSOLDataset(records, protocol_of(args, protocol).transform())
    kept = []

    def step(model, batch):
        return (*scoremap_step(model, batch, size=args.input_size), batch["image"])

    def save(item):
        i, scoremap = item
        save_scoremap(maps_dir, records[i].image_id, scoremap)

    with file_writers() as writers:
        def consume(result) -> None:  # on the loop's host thread, while the device runs the next batches
            indices, maps, images = result
            indices, maps = indices.tolist(), maps.cpu().numpy()
            saved = writers.map(save, zip(indices, maps)) if maps_dir is not None else ()
            for i, scoremap in zip(indices, maps):
                evaluator.accumulate(records[i].image_id, scoremap)
            shown = [k for k, i in enumerate(indices) if i < keep]
            if shown:
                kept.extend(zip([indices[k] for k in shown], maps[shown], to_uint8_images(images[shown].cpu())))
            list(saved)

        run_inference(model, dataset, step, ctx, batch_size=args.batch_size, workers=args.workers, amp=args.amp,
                      desc=f"score maps ({protocol})", consume=consume)
    return kept


def rescore_command(args, protocol: str, split: str, scoremaps: Path, threshold: float, output: Path,
                    predictions_path: str) -> str:
    cmd = ["python", "-m", "utils.evaluation", "--data-root", os.path.abspath(args.data_root), "--layout",
           args.layout, "--split", split, "--scoremaps", os.path.abspath(scoremaps), "--protocol", protocol,
           "--threshold", repr(float(threshold)), "--input-size", str(args.input_size),
           "--resize-size", str(args.resize_size), "--iou-threshold", str(args.iou_threshold),
           "--iou-compare", iou_compare_of(args, protocol), "--iou-convention", args.iou_convention,
           "--cam-curve-interval", str(args.cam_curve_interval), "--output", os.path.abspath(output)]
    if args.metadata_root:
        cmd += ["--metadata-root", os.path.abspath(args.metadata_root)]
    if args.exclude_ids:
        cmd += ["--exclude-ids", *args.exclude_ids]
    return shlex.join(cmd + ["--predictions", os.path.abspath(predictions_path)])


def iou_compare_of(args, protocol: str) -> str:
    """spol-official: always the authors' '>'; otherwise --iou-compare (default '>=')."""
    return protocol_of(args, protocol).iou_compare or args.iou_compare or ">="


def held_out_threshold(model, protocol: str, args, ctx, out: Path) -> float:
    """The best IoU-50 threshold of the maps of ``--threshold-split`` (the same on every rank); its
    results go to ``<out>/threshold_split_<split>/metrics.json``."""
    held = load_split(args, args.threshold_split, layout=args.threshold_layout or args.layout,
                      data_root=args.threshold_data_root or args.data_root)
    held_dir = out / f"threshold_split_{args.threshold_split}"
    threshold = None
    with new_evaluator(held, protocol, args, split=args.threshold_split) as evaluator:
        stream_scoremaps(model, held, protocol, evaluator, args, ctx,
                         maps_dir=held_dir / "scoremaps" if args.scoremaps else None)
        if merged_on_main(evaluator, ctx) is not None:
            results = evaluator.compute().metrics
            write_metrics(held_dir / "metrics.json", results)
            threshold = results["best_threshold"]
    return all_gather_object(threshold, ctx)[0]  # rank 0's choice, on every rank


def evaluate_protocol(model, records, protocol: str, args, ctx, flags, predictions_path: str) -> dict | None:
    """Every image's map from the model to the evaluator (all ranks), then metrics, boxes and grid (rank 0)."""
    out = Path(args.output_dir) / protocol
    maps_dir = out / "scoremaps" if args.scoremaps else None
    proto = protocol_of(args, protocol)
    threshold, source = None, None
    if proto.needs_threshold:
        threshold, source = args.spol_threshold, "SPOL's fixed threshold"
    elif args.threshold_split:
        threshold = held_out_threshold(model, protocol, args, ctx, out)
        source = f"best IoU-50 threshold on the held-out split '{args.threshold_split}'"
    with new_evaluator(records, protocol, args, threshold=threshold, flags=flags, split=args.split) as evaluator:
        shown = stream_scoremaps(model, records, protocol, evaluator, args, ctx, maps_dir=maps_dir,
                                 keep=args.grid_images)
        shown = gather_lists(shown, ctx)
        if merged_on_main(evaluator, ctx) is None:
            return None
        evaluation = evaluator.compute()
    results = evaluation.metrics
    results["threshold_source"] = source or ("chosen on the TEST split itself (no --threshold-split given): "
                                             "optimistic, not the held-out choice of Choe et al.")
    if maps_dir is not None:
        results["rescore_command"] = rescore_command(args, protocol, args.split, maps_dir, results["threshold_used"],
                                                     out / "rescored.json", predictions_path)
    if results.pop("per_image", None) is not None:  # the per-image hit list of the SPOL protocols, beside metrics.json
        lines = ["image_id,iou,hit,skipped"] + [
            f"{o['image_id']},{'' if o['iou'] is None else repr(o['iou'])},{int(o['hit'])},{o['skipped'] or ''}"
            for o in evaluation.hits]
        atomic_write_text(out / "hits.csv", "\n".join(lines) + "\n")
    ids = [r.image_id for r in records]
    write_boxes_csv(out / "boxes.csv", ids, [evaluation.boxes[i] for i in ids],
                    meta={**proto.meta(), "threshold": results["threshold_used"], "box_rule": proto.box_rule,
                          "convention": proto.box_convention})
    write_metrics(out / "metrics.json", results)
    shown = sorted(shown, key=lambda item: item[0])
    write_grid(out / "grid.png", [records[i] for i, _, _ in shown], {records[i].image_id: m for i, m, _ in shown},
               evaluation.boxes, proto, max_images=args.grid_images,
               images={records[i].image_id: image for i, _, image in shown})
    return results


def main(args):
    resolve_defaults(args, "seg")
    name = dataset_name(args)
    if args.spol_threshold is None:
        args.spol_threshold = spol_config(name, "seg_test")["spol_threshold"]
    if args.cls_results:
        predictions_path = str(Path(args.cls_results))
        if not Path(predictions_path).is_file():
            raise DataError.at(predictions_path, None, "--cls-results: not found (a predictions.csv of "
                               "spol/cls/test.py or the SPOL authors' top1top5.npy)")
    else:
        predictions_path = str(require_output(Path(default_path(args.cls_dir, args, "cls")) / "predictions.csv",
                                              "spol/cls/test.py"))
    checkpoint = args.checkpoint or str(Path(args.output_dir) / "model.pth")
    require_output(checkpoint, "spol/seg/train.py")
    with start_run(args, inherit=SEG_TEST_INHERITS, outputs=seg_test_outputs(args)) as ctx:
        save_args(args, ctx)
        return evaluate(args, ctx, checkpoint, predictions_path)


def evaluate(args, ctx, checkpoint: str, predictions_path: str) -> dict:
    """Every protocol of ``--protocol`` on ``--split`` with the seg model in ``checkpoint`` and the
    classes of ``predictions_path``; returns each protocol's results (rank 0; None on the others)."""
    name = dataset_name(args)
    records = load_split(args, args.split)
    # read before inference: every image of the split has its result (our csv or the authors' npy)
    flags = classification_flags(predictions_path, records, producer="spol/cls/test.py")
    model = load_stage_weights(SegModel(pretrained="none", backbone=args.backbone,
                                        output_stride=args.output_stride), checkpoint, "spol/seg/train.py")
    model.to(ctx.device)
    protocols = expand_protocols(args.protocol)
    summary = {}
    for protocol in protocols:
        summary[protocol] = evaluate_protocol(model, records, protocol, args, ctx, flags, predictions_path)
    if ctx.is_main:
        keys = ("top1_loc", "top5_loc", "gt_known_loc", "maxboxacc", "maxboxacc_v2", "pxap",
                "threshold_used", "threshold_source", "num_images", "num_counted", "num_skipped",
                "num_skipped_by_reason", "iou_compare", "rescore_command")
        report = {p: {k: r[k] for k in keys if k in r} for p, r in summary.items()}
        report["paper"] = PAPER[name]
        report["checkpoint"] = str(Path(checkpoint).resolve())
        print(write_metrics(Path(args.output_dir) / "metrics.json", report), end="", flush=True)
        log_test_step(args, ctx, {p: report[p] for p in protocols},
                      {f"test/{p}/grid": Path(args.output_dir) / p / "grid.png" for p in protocols})
    return summary


if __name__ == "__main__":
    run_cli(main, get_args_parser, "seg_test", args=ARGS)
