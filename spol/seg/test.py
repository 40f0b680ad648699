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
split (matched by name). Writes per protocol
``scoremaps/<id stem>.npy`` (sigmoid maps at 224 x 224: ``python -m utils.evaluation`` re-scores them,
the exact command is in metrics.json), ``metrics.json``/``metrics.txt``, ``boxes.csv``/``boxes.json``,
``grid.png``; and ``<output>/metrics.json``/``metrics.txt`` with both protocols and the paper's numbers,
``<output>/test_args.yaml`` (this step's options; ``args.yaml`` beside it is the training run's).
"""
from __future__ import annotations

from spol.options import seg_test_parser as get_args_parser
from utils.config import parse_early

# run as a script: --help and bad options are answered before torch loads
ARGS = parse_early(__name__, get_args_parser, "seg_test")

import os
import shlex
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spol.options import (SEG_TEST_INHERITS, dataset_name, default_path, load_split, resolve_defaults,
                          seg_test_outputs, spol_config)
from spol.model import SegModel
from spol.visualize import write_grid
from utils.engine.checkpoint import load_stage_weights
from utils.engine.rundir import run_cli
from utils.data.dataset import WSOLDataset
from utils.engine.distributed import all_gather_object, barrier
from utils.engine.inference import file_writers, run_inference
from utils.errors import DataError
from utils.evaluation.evaluate import evaluate_scoremaps, format_table, load_scoremap, scoremap_path
from utils.io import atomic_save_npy, atomic_write_json, atomic_write_text
from utils.paths import require_output
from utils.evaluation.handoff import read_cls_results, write_boxes_csv
from utils.evaluation.protocol import expand as expand_protocols
from utils.evaluation.protocol import get_protocol
from utils.engine.stage import save_args, start_run

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


def write_scoremaps(model, records, protocol: str, out_dir: Path, args, ctx) -> None:
    """This rank's share of the records -> ``out_dir/<id stem>.npy`` at the protocol geometry
    (its own transform: the authors' pipeline for the SPOL protocols, torchvision's for resize)."""
    dataset = WSOLDataset(records, protocol_of(args, protocol).transform())

    def save(item):
        i, scoremap = item
        atomic_save_npy(scoremap_path(out_dir, records[i].image_id), scoremap)

    with file_writers() as writers:
        def consume(result) -> None:  # on the loop's host thread, while the device runs the next batches
            indices, maps = result
            list(writers.map(save, zip(indices.tolist(), maps.cpu().numpy())))

        run_inference(model, dataset, lambda m, batch: scoremap_step(m, batch, size=args.input_size),
                      ctx, batch_size=args.batch_size, workers=args.workers, amp=args.amp,
                      desc=f"score maps ({protocol})", consume=consume)


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


def score(records, protocol: str, maps_dir: Path, threshold, args, predictions, split: str) -> dict:
    return evaluate_scoremaps(records, maps_dir, protocol, cam_curve_interval=args.cam_curve_interval,
                              threshold=threshold, predictions=predictions, iou_threshold=args.iou_threshold,
                              iou_compare=iou_compare_of(args, protocol), inclusive_iou=args.iou_convention == "inclusive",
                              input_size=args.input_size, resize_size=args.resize_size, split=split,
                              workers=args.eval_workers)


def evaluate_protocol(model, records, protocol: str, args, ctx, predictions_path: str) -> dict | None:
    """Score maps of every image (all ranks), then metrics, boxes and grid (rank 0)."""
    out = Path(args.output_dir) / protocol
    maps_dir = out / "scoremaps"
    write_scoremaps(model, records, protocol, maps_dir, args, ctx)
    threshold, source = None, None
    proto = protocol_of(args, protocol)
    if proto.needs_threshold:
        threshold = args.spol_threshold
        source = "SPOL's fixed threshold"
    elif args.threshold_split:
        held = load_split(args, args.threshold_split, layout=args.threshold_layout or args.layout,
                          data_root=args.threshold_data_root or args.data_root)
        held_dir = out / f"threshold_split_{args.threshold_split}" / "scoremaps"
        write_scoremaps(model, held, protocol, held_dir, args, ctx)
        barrier(ctx)
        if ctx.is_main:
            held_results = score(held, protocol, held_dir, None, args, None, args.threshold_split)
            threshold = held_results["best_threshold"]
            atomic_write_json(held_dir.parent / "metrics.json", held_results)
        threshold = all_gather_object(threshold, ctx)[0]  # rank 0's choice, on every rank
        source = f"best IoU-50 threshold on the held-out split '{args.threshold_split}'"
    barrier(ctx)
    if not ctx.is_main:
        return None
    results = score(records, protocol, maps_dir, threshold, args, predictions_path, args.split)
    if source is None:
        source = ("chosen on the TEST split itself (no --threshold-split given): optimistic, "
                  "not the held-out choice of Choe et al.")
    results["threshold_source"] = source
    results["rescore_command"] = rescore_command(args, protocol, args.split, maps_dir,
                                                 results["threshold_used"], out / "rescored.json", predictions_path)
    boxes = {}  # one map in memory at a time (ImageNet: 50k maps)
    for r in records:
        boxes[r.image_id] = proto.box(load_scoremap(maps_dir, r.image_id, args.input_size), results["threshold_used"])
    if "per_image" in results:  # the per-image hit list of the SPOL protocols, beside metrics.json
        per_image = results.pop("per_image")
        lines = ["image_id,iou,hit,skipped"] + [
            f"{o['image_id']},{'' if o['iou'] is None else repr(o['iou'])},{int(o['hit'])},{o['skipped'] or ''}"
            for o in per_image]
        atomic_write_text(out / "hits.csv", "\n".join(lines) + "\n")
    write_boxes_csv(out / "boxes.csv", [r.image_id for r in records], [boxes[r.image_id] for r in records],
                    meta={**proto.meta(), "threshold": results["threshold_used"], "box_rule": proto.box_rule,
                          "convention": proto.box_convention})
    atomic_write_json(out / "metrics.json", results)
    atomic_write_text(out / "metrics.txt", format_table(results) + f"threshold source: {source}\n")
    shown = records[:args.grid_images]
    write_grid(out / "grid.png", shown, {r.image_id: load_scoremap(maps_dir, r.image_id, args.input_size) for r in shown},
               boxes, proto, max_images=args.grid_images)
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
    # checked before inference: every image of the split has its result (our csv or the authors' npy)
    read_cls_results(predictions_path, [r.image_id for r in records], producer="spol/cls/test.py")
    model = load_stage_weights(SegModel(pretrained="none", backbone=args.backbone,
                                        output_stride=args.output_stride), checkpoint, "spol/seg/train.py")
    model.to(ctx.device)
    protocols = expand_protocols(args.protocol)
    summary = {}
    for protocol in protocols:
        summary[protocol] = evaluate_protocol(model, records, protocol, args, ctx, predictions_path)
    if ctx.is_main:
        keys = ("top1_loc", "top5_loc", "gt_known_loc", "maxboxacc", "maxboxacc_v2", "pxap",
                "threshold_used", "threshold_source", "num_images", "num_counted", "num_skipped",
                "num_skipped_by_reason", "iou_compare", "rescore_command")
        report = {p: {k: r[k] for k in keys if k in r} for p, r in summary.items()}
        report["paper"] = PAPER[name]
        report["checkpoint"] = str(Path(checkpoint).resolve())
        atomic_write_json(Path(args.output_dir) / "metrics.json", report)
        text = "".join(f"== protocol {p} ==\n" + format_table(r) for p, r in summary.items())
        text += "paper (SPOL protocol): " + ", ".join(f"{k} {v}" for k, v in PAPER[name].items()) + "\n"
        atomic_write_text(Path(args.output_dir) / "metrics.txt", text)
        print(text, end="", flush=True)
    return summary


if __name__ == "__main__":
    run_cli(main, get_args_parser, "seg_test", args=ARGS)
