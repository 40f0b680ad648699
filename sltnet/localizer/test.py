"""Evaluate the SLT-Net localizer alone (Table 5 / Table 6: GT-known Loc) and write its boxes and maps.

Per image: the localization map (top-K ACAM, Eq. 9; with --no-acam the ground-truth class's CAM;
--teacher-map acam-label: top-K ACAM with the label forced among the K classes, gt: the label's CAM;
on any split) at the protocol input size; its box by CAM's rule on the raw map (--box-rule zhou:
values above --box-threshold of the max, largest connected component; --box-rule choe: Choe et al.'s
rule on the min-max normalised map). --box-threshold best (--split train only) first sweeps 0.05 ..
0.95 (step 0.01) on the split's images with GT boxes and boxes every image at the threshold of the
highest GT-known Loc (a second pass). K: --top-k, or --top-k-ratio x the class count; by default
the training run's (args.yaml). Each batch's maps and boxes go from the loop's consumer to the
evaluator in memory (``utils.evaluation.evaluator``): the method's boxes are scored (GT-known Loc at
the fixed threshold) and, with --maxboxacc, the min-max normalised maps are scored as the protocol
scores any map (MaxBoxAcc, MaxBoxAccV2, on CUB PxAP, and ``gt_known_loc_choe_rule``: GT-known Loc
of the protocol's own box rule at the same threshold, equal to ours only with --box-rule choe; its
full results incl. curves go to evaluate.json). Writes into <localizer dir>/<split>/: test_args.yaml
(this step's options), boxes.csv (+ boxes.json: protocol, input size, threshold and how it was
chosen, box rule, map, the localizer's downsampling factor), metrics.json / metrics.txt (when the
split has GT boxes, or with --box-threshold best) and, with --scoremaps, scoremaps/<image id
stem>.npy (the normalised maps, for ``python -m utils.evaluation``). With --split train the boxes
are the standalone regressor's training targets.

    python3 sltnet/localizer/test.py --config configs/sltnet_cub_vgg16.yaml --data-root dataset/CUB_200_2011
    python3 sltnet/localizer/test.py --config configs/sltnet_cub_vgg16.yaml --split train --no-scoremaps --no-maxboxacc
    python3 sltnet/localizer/test.py --config configs/sltnet_cub_vgg16.yaml --split train --no-scoremaps --no-maxboxacc \
        --teacher-map acam-label --box-threshold best
    torchrun --nproc_per_node 4 sltnet/localizer/test.py --config configs/sltnet_imagenet_vgg16.yaml --split val
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by its path (python3 sltnet/localizer/test.py): the repository root first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sltnet.options import localizer_test_parser as get_args_parser
from utils.config import parse_early

# run as a script: --help and bad options are answered before torch loads
ARGS = parse_early(__name__, get_args_parser, "localizer_test")

from contextlib import ExitStack

import numpy as np
import torch

from sltnet.boxes import BEST_THRESHOLDS, ThresholdSweep, maps_to_boxes
from sltnet.losses import localization_map
from sltnet.model import build_branch
from sltnet.options import (LOCALIZER_TEST_INHERITS, LOCALIZER_TEST_OUTPUTS, PRODUCER, check_top_k, resolve_defaults,
                            resolve_top_k)
from utils.config import explicit_options
from utils.data.dataset import WSOLDataset
from utils.data.layouts import load_records, num_classes
from utils.engine.checkpoint import load_stage_weights
from utils.engine.distributed import all_gather_object, merged_on_main
from utils.engine.inference import file_writers, run_inference
from utils.engine.rundir import run_cli
from utils.engine.stage import save_args, start_run
from utils.errors import DataError
from utils.evaluation.boxes import normalize_minmax, resize_maps
from utils.evaluation.evaluator import LocalizationEvaluator
from utils.evaluation.handoff import save_scoremap, write_boxes_csv
from utils.evaluation.protocol import get_protocol
from utils.evaluation.results import write_metrics
from utils.engine.tensorboard import log_test_step
from utils.io import atomic_write_json

STAGE = "localizer_test"


def localizer_step(model, batch, *, acam: bool, top_k: int, size,
                   teacher: str = "acam") -> tuple[torch.Tensor, torch.Tensor]:
    """One batch on the device -> ``(dataset indices [B], raw localization maps [B, H, W] at the input
    size)``: the map of :func:`sltnet.losses.localization_map`, resized bilinearly on the device."""
    out = model(batch["image"])
    maps = localization_map(out["cams"].float(), out["logits"].float(), batch["label"], acam=acam, top_k=top_k,
                            teacher=teacher)
    return torch.as_tensor(batch["index"]), resize_maps(maps, size)


def map_name(args) -> str:
    """What boxes.json's ``map`` says of the map ``args`` select."""
    teacher = getattr(args, "teacher_map", "acam")
    if teacher == "acam-label":
        return f"top-{args.top_k} ACAM, label forced among the K classes"
    if teacher == "gt" or not args.acam:
        return "GT-class CAM"
    return f"top-{args.top_k} ACAM"


def boxes_and_scoremaps(result, *, threshold: float, rule: str = "zhou") -> dict:
    """:func:`localizer_step`'s result on the host: the boxes by ``rule`` (``zhou``: on the raw map)
    and the min-max normalised maps (the saved score maps, for the evaluator)."""
    index, raw = result
    raw = raw.cpu()
    boxes = np.stack([b[0] for b in maps_to_boxes(raw, threshold, rule)])
    maps = normalize_minmax(raw).numpy().astype(np.float32)
    return {"index": index.cpu().numpy(), "maps": maps, "boxes": boxes}


def _step(args):
    size = (args.input_size, args.input_size)
    teacher = getattr(args, "teacher_map", "acam")
    return lambda m, batch: localizer_step(m, batch, acam=args.acam, top_k=args.top_k, size=size, teacher=teacher)


def localize(model, dataset, ctx, args, *, consume=None, threshold: float | None = None) -> list[tuple[int, np.ndarray]]:
    """The localizer over this rank's shard (``utils.engine.inference.run_inference``): [(dataset index, box)]
    in shard order, boxes at ``threshold`` (default ``args.box_threshold``).

    ``consume(result)`` is called on every batch's host result (maps, boxes, see
    :func:`boxes_and_scoremaps`) before the maps are dropped, e.g. to save score maps or accumulate
    metrics, so memory stays a few batches; it runs on the loop's host thread, batch after batch.
    """
    threshold = args.box_threshold if threshold is None else threshold

    def on_host(result):
        result = boxes_and_scoremaps(result, threshold=threshold, rule=args.box_rule)
        if consume is not None:
            consume(result)
        return list(zip(result["index"].tolist(), result["boxes"]))

    batches = run_inference(model, dataset, _step(args), ctx, batch_size=args.batch_size, workers=args.workers,
                            amp=args.amp, desc=STAGE, consume=on_host)
    return [item for batch in batches for item in batch]


def best_threshold(model, records, transform, protocol, ctx, args) -> ThresholdSweep:
    """``--box-threshold best``: the maps of ``records`` that have GT boxes, boxed by ``args.box_rule``
    at every threshold of :data:`sltnet.boxes.BEST_THRESHOLDS` (every rank its shard, merged): the
    sweep, whose :meth:`~sltnet.boxes.ThresholdSweep.best` is the threshold of the highest GT-known Loc."""
    boxed = [r for r in records if len(r.boxes)]
    if not boxed:
        raise DataError(f"--box-threshold best: no image of split {args.split} has a GT box to choose it with; "
                        "pass a number")

    def new_sweep():
        return ThresholdSweep(BEST_THRESHOLDS, rule=args.box_rule, iou_threshold=args.iou_threshold,
                              iou_compare=args.iou_compare, inclusive_iou=protocol.inclusive_iou)

    sweep = new_sweep()

    def on_host(result):
        index, raw = result
        sweep.update(raw.cpu(), [protocol.gt_boxes(boxed[int(i)].boxes, boxed[int(i)].size) for i in index])

    run_inference(model, WSOLDataset(boxed, transform), _step(args), ctx, batch_size=args.batch_size,
                  workers=args.workers, amp=args.amp, desc=f"{STAGE} (threshold sweep)", consume=on_host)
    merged = new_sweep()
    for state in all_gather_object(sweep.state(), ctx):   # every rank's shard
        merged.merge(state)
    return merged


def main(args):
    resolve_defaults(args, "localizer")
    with start_run(args, inherit=LOCALIZER_TEST_INHERITS, outputs=LOCALIZER_TEST_OUTPUTS) as ctx:
        return evaluate(args, ctx)


def evaluate(args, ctx) -> Path:
    """Boxes (and score maps, metrics where the split has GT boxes) of the localizer on ``--split``;
    returns the output folder."""
    out_dir = Path(args.output_dir)

    records = load_records(args.data_root, args.layout, args.split)
    resolve_top_k(args, num_classes(records), explicit_options(args))   # --top-k-ratio: K of this dataset
    save_args(args, ctx)  # the options are final: K resolved
    protocol = get_protocol(args.protocol, args.input_size, args.resize_size)
    # SLT-Net trains with torchvision's; uint8 images, normalised on the batch by run_inference
    transform = protocol.transform(pipeline="torchvision", normalize=False)
    dataset = WSOLDataset(records, transform)
    branch = build_branch(args, num_classes(records), pretrained="none")
    load_stage_weights(branch, args.weights or Path(args.localizer_dir) / "model.pth", PRODUCER["localizer"])
    check_top_k(args, num_classes(records))
    model = branch.localizer.to(ctx.device)

    threshold, chosen = args.box_threshold, {"box_threshold_source": "fixed (--box-threshold)"}
    if args.box_threshold == "best":   # chosen on this (training) split's GT boxes, then every image boxed at it
        sweep = best_threshold(model, records, transform, protocol, ctx, args)
        threshold, best_loc = sweep.best()
        chosen = {"box_threshold_source": f"best GT-known Loc of split {args.split} over thresholds "
                                          f"{BEST_THRESHOLDS[0]}..{BEST_THRESHOLDS[-1]} step 0.01, box rule "
                                          f"{args.box_rule}, {sweep.meters[0].num_images} images with GT boxes",
                  "box_threshold_gt_known_loc": best_loc}
        if ctx.is_main:
            print(f"{STAGE}: --box-threshold best = {threshold} (GT-known Loc {best_loc:.2f} on split {args.split})",
                  flush=True)

    has_gt = all(len(r.boxes) for r in records)
    # the method's boxes (its --box-rule on the raw map), scored; and, with --maxboxacc, its normalised
    # maps under the protocol's own box rule at the same threshold, with MaxBoxAcc(V2) and PxAP
    method = LocalizationEvaluator(records, protocol, iou_threshold=args.iou_threshold, iou_compare=args.iou_compare,
                                   inclusive_iou=protocol.inclusive_iou, sweep=False, split=args.split)
    maps = (LocalizationEvaluator(records, protocol, threshold=threshold, cam_curve_interval=args.cam_curve_interval,
                                  iou_threshold=args.iou_threshold, iou_compare=args.iou_compare, split=args.split,
                                  workers=args.workers) if has_gt and args.maxboxacc else None)

    with ExitStack() as stack, file_writers() as writers:
        evaluators = [stack.enter_context(e) for e in (method, maps) if e is not None]

        def consume(result):  # on the loop's host thread, batch after batch
            ids = [records[int(i)].image_id for i in result["index"]]
            saved = writers.map(save_scoremap, [out_dir / "scoremaps"] * len(ids), ids, result["maps"]) \
                if args.scoremaps else ()
            for image_id, box, scoremap in zip(ids, result["boxes"], result["maps"]):
                method.accumulate(image_id, box=box)
                if maps is not None:
                    maps.accumulate(image_id, scoremap)
            list(saved)

        localize(model, dataset, ctx, args, consume=consume, threshold=threshold)
        merged = [merged_on_main(e, ctx) for e in evaluators]
        results = [e.compute() for e in merged if e is not None]
    if ctx.is_main:
        located = results[0]
        meta = {**protocol.meta(), "output_size": list(protocol.geometry["output_size"]), "box_threshold": threshold,
                **chosen, "box_rule": args.box_rule, "downsampling_factor": float(model.stride),
                "backbone": args.backbone, "map": map_name(args), "teacher_map": args.teacher_map,
                "top_k": args.top_k, "split": args.split,
                "box_convention": "x0,y0 top-left; x1=min(x0+w,W-1), y1=min(y0+h,H-1) (utils.evaluation.boxes)"}
        write_boxes_csv(out_dir / "boxes.csv", [r.image_id for r in records],
                        [located.boxes[r.image_id] for r in records], meta=meta)
        if has_gt:
            metrics = {k: v for k, v in located.metrics.items() if k != "per_image"}
            metrics.update({"box_threshold": threshold, **chosen, "box_rule": args.box_rule, "map": map_name(args)})
            if args.box_threshold == "best":
                metrics["box_threshold_sweep"] = {"thresholds": list(sweep.thresholds), "gt_known_loc": sweep.curve()}
            if maps is not None:
                full = results[1].metrics
                atomic_write_json(out_dir / "evaluate.json", full)
                metrics.update({k: full[k] for k in ("maxboxacc", "maxboxacc_v2", "maxboxacc_v2_per_iou",
                                                     "pxap") if k in full})
                metrics["gt_known_loc_choe_rule"] = full["gt_known_loc"]   # same threshold, the protocol's rule
            print(write_metrics(out_dir / "metrics.json", metrics), end="", flush=True)
            log_test_step(args, ctx, metrics)
        elif args.box_threshold == "best":   # some images without GT boxes: the choice alone
            write_metrics(out_dir / "metrics.json", {
                "split": args.split, "protocol": protocol.label, "box_threshold": threshold, **chosen,
                "box_rule": args.box_rule, "map": map_name(args),
                "box_threshold_sweep": {"thresholds": list(sweep.thresholds), "gt_known_loc": sweep.curve()}})
        print(f"{STAGE}: {len(records)} boxes -> {out_dir / 'boxes.csv'}", flush=True)
    return out_dir


if __name__ == "__main__":
    run_cli(main, get_args_parser, STAGE, args=ARGS)
