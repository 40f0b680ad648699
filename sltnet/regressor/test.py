"""Final SLT-Net evaluation (Fig. 2c): box from the regressor, class from the classifier.

Top-1 / Top-5 / GT-known Loc (Tables 1-4, 7) with every image counted: an image is Top-k correct
when the classifier's top-k (``predictions.csv`` of sltnet/classifier/test.py) holds the label AND
the regressor's box has IoU >= 0.5 with a GT box. Writes into <regressor dir>/<split>/: metrics.json,
metrics.txt, test_args.yaml, boxes.csv (regressor boxes, protocol input pixels) and grid.png (224-pixel
tiles with
image ids, title and legend: GT green, localizer-map box blue when its boxes.csv for this split
exists, with the localizer's score map overlaid when saved, regressor red).

Regressor weights: --regressor-source localizer (the jointly trained regressor of Fig. 2a in
<localizer dir>/model.pth; the script's default) or regressor (<regressor dir>/model.pth from
sltnet/regressor/train.py; what the configs of Tables 1-4 and 7 select, see sltnet/README.md).
The prediction p is converted back to pixels as it was trained (args.yaml beside the weights, also
beside --weights): p * m (--box-scale stride, Sec. 3.1) or p * input size (--box-scale input), then
clipped to the image. The network is built as trained too: the model options not given (backbone,
output stride, head width, final ReLU, --regressor-pool / --regressor-grid, ...) come from the training
run's args.yaml, and one given with another value is refused (sltnet.options.REGRESSOR_TEST_INHERITS);
--top-k-ratio is accepted and not read (the box is the regressor's).

    python3 sltnet/regressor/test.py --config configs/sltnet_cub_vgg16.yaml --data-root dataset/CUB_200_2011
    torchrun --nproc_per_node 4 sltnet/regressor/test.py --config configs/sltnet_imagenet_inception_v3.yaml --split val
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by its path (python3 sltnet/regressor/test.py): the repository root first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sltnet.options import regressor_test_parser as get_args_parser
from utils.config import parse_early

# run as a script: --help and bad options are answered before torch loads
ARGS = parse_early(__name__, get_args_parser, "regressor_test")

from functools import partial

import numpy as np
import torch

from sltnet.boxes import box_divisor, denormalize_boxes
from sltnet.model import BoxRegressor, build_branch
from sltnet.options import (PRODUCER, REGRESSOR_TEST_INHERITS, REGRESSOR_TEST_OUTPUTS, check_box_encoding,
                            regressor_weights, resolve_defaults)
from utils.data.dataset import WSOLDataset
from utils.data.layouts import load_records, num_classes
from utils.data.transforms import to_uint8_images
from utils.engine.checkpoint import load_stage_weights
from utils.engine.distributed import merged_on_main
from utils.engine.inference import gather_lists, run_inference
from utils.engine.rundir import run_cli
from utils.engine.stage import save_args, start_run
from utils.errors import DataError
from utils.evaluation.evaluate import load_scoremap
from utils.evaluation.evaluator import LocalizationEvaluator
from utils.evaluation.handoff import read_boxes_csv, read_predictions, scoremap_path, write_boxes_csv
from utils.evaluation.protocol import canonical, get_protocol
from utils.evaluation.results import write_metrics
from utils.engine.tensorboard import log_test_step
from utils.evaluation.visualize import BLUE, GREEN, RED, box_grid
from utils.io import atomic_save_png
from utils.paths import missing_output, require_output

STAGE = "regressor_test"


def build_predictor(args, num_classes_: int):
    """The regressor (or, with --share-backbone, the whole branch) with its weights loaded."""
    producer = PRODUCER[args.regressor_source]
    path = require_output(regressor_weights(args), producer, "regressor weights")
    if args.share_backbone:
        model = load_stage_weights(build_branch(args, num_classes_, pretrained="none"), path, producer)
        return model, lambda m, x: m(x)["boxes"]
    model = BoxRegressor(args.backbone, pretrained="none", feature=args.regressor_feature,
                         hidden=args.regressor_hidden, final_relu=args.regressor_final_relu,
                         output_stride=args.output_stride, pool=args.regressor_pool, grid=args.regressor_grid)
    load_stage_weights(model, path, producer, prefix="regressor.")
    return model, lambda m, x: m(x)


def regressor_step(model, batch, *, predict, divisor, input_size: int):
    """One batch on the device -> ``(dataset indices [B], boxes [B, 4] in input pixels, images)``:
    ``predict(model, images)`` (see :func:`build_predictor`) times ``divisor``, clipped to the image."""
    boxes = denormalize_boxes(predict(model, batch["image"]).float(), divisor).clamp(0, input_size)
    return torch.as_tensor(batch["index"]), boxes, batch["image"]


def regressor_on_host(result, *, grid_images: int):
    """:func:`regressor_step`'s result on the host (the loop's consumer thread): ``([(index, box)],
    [(index, uint8 image)] of the first ``grid_images`` images, for the grid)``."""
    index, boxes, images = result
    index = index.cpu()
    keep = index < grid_images
    shown = to_uint8_images(images[keep.to(images.device)].cpu()) if bool(keep.any()) else []
    return list(zip(index.tolist(), boxes.cpu().numpy())), list(zip(index[keep].tolist(), shown))


def main(args):
    resolve_defaults(args, "regressor")
    with start_run(args, inherit=REGRESSOR_TEST_INHERITS, outputs=REGRESSOR_TEST_OUTPUTS) as ctx:
        save_args(args, ctx)
        return evaluate(args, ctx)


def evaluate(args, ctx) -> Path:
    """The regressor's boxes on ``--split`` scored with the classifier's classes; returns the output folder."""
    out_dir = Path(args.output_dir)

    records = load_records(args.data_root, args.layout, args.split)
    pred_path = Path(args.predictions) if args.predictions else Path(args.classifier_dir) / args.split / "predictions.csv"
    predictions = read_predictions(pred_path, producer=f"sltnet/classifier/test.py --split {args.split}")
    for record in records:
        if record.image_id not in predictions:
            raise DataError.at(pred_path, None, f"no prediction for {record.image_id}: rerun "
                               f"sltnet/classifier/test.py --split {args.split} on this dataset")
    protocol = get_protocol(args.protocol, args.input_size, args.resize_size)
    # SLT-Net trains with torchvision's; uint8 images, normalised on the batch by run_inference
    transform = protocol.transform(pipeline="torchvision", normalize=False)
    model, predict = build_predictor(args, num_classes(records))
    model.to(ctx.device)
    check_box_encoding(args)  # read from the regressor's training run by start_run, or given
    divisor = box_divisor(args.box_scale, args.input_size, args.box_stride)

    flags = {r.image_id: (predictions[r.image_id].top1_correct, predictions[r.image_id].top5_correct) for r in records}
    with LocalizationEvaluator(records, protocol, flags=flags, iou_threshold=args.iou_threshold,
                               iou_compare=args.iou_compare, inclusive_iou=protocol.inclusive_iou, sweep=False,
                               split=args.split) as evaluator:
        def consume(result):  # on the loop's host thread: the boxes to the evaluator, the grid's images kept
            boxes, shown = regressor_on_host(result, grid_images=args.grid_images)
            for index, box in boxes:
                evaluator.accumulate(records[index].image_id, box=box)
            return shown

        results = run_inference(model, WSOLDataset(records, transform),
                                partial(regressor_step, predict=predict, divisor=divisor, input_size=args.input_size),
                                ctx, batch_size=args.batch_size, workers=args.workers, amp=args.amp, desc=STAGE,
                                consume=consume)
        shown = gather_lists([it for r in results for it in r], ctx)
        evaluation = evaluator.compute() if merged_on_main(evaluator, ctx) is not None else None
    if ctx.is_main:
        boxes = np.stack([evaluation.boxes[r.image_id] for r in records])
        gts = [protocol.gt_boxes(r.boxes, r.size) for r in records]
        preds = [predictions[r.image_id] for r in records]
        metrics = {"split": args.split, "protocol": protocol.label, "regressor_source": args.regressor_source,
                   "box_scale": args.box_scale, "box_stride": args.box_stride,
                   **{k: v for k, v in evaluation.metrics.items() if k not in ("protocol", "split", "per_image")},
                   "top1_cls": 100.0 * float(np.mean([p.top1_correct for p in preds])),
                   "top5_cls": 100.0 * float(np.mean([p.top5_correct for p in preds]))}
        text = write_metrics(out_dir / "metrics.json", metrics)
        write_boxes_csv(out_dir / "boxes.csv", [r.image_id for r in records], boxes,
                        meta={**protocol.meta(), "source": "regressor", "split": args.split})
        write_grid(out_dir / "grid.png", sorted(shown, key=lambda t: t[0]), records, boxes, gts, args)
        print(text, end="", flush=True)
        log_test_step(args, ctx, metrics, {"test/grid": out_dir / "grid.png"})
    return out_dir


def write_grid(path, shown, records, boxes, gts, args) -> None:
    """grid.png: GT (green), localizer (blue, when its boxes.csv for this split exists, with its score
    map overlaid when scoremaps/ beside it holds it), regressor (red); see utils.evaluation.visualize.stage_picture."""
    loc_path = Path(args.localizer_boxes) if args.localizer_boxes else Path(args.localizer_dir) / args.split / "boxes.csv"
    loc_boxes = {}
    if loc_path.is_file():
        loc_boxes, meta = read_boxes_csv(loc_path)
        if (meta.get("protocol") not in (args.protocol, canonical(args.protocol))
                or meta.get("input_size") != args.input_size):
            print(f"{STAGE}: {loc_path} was written for another geometry ({meta}); grid without localizer boxes")
            loc_boxes = {}
    elif args.localizer_boxes:
        raise missing_output(loc_path, "sltnet/localizer/test.py", "localizer boxes")
    maps_dir = loc_path.parent / "scoremaps"   # the localizer test's maps of this split, when saved
    images, sets, maps, ids = [], [], [], []
    for index, image in shown:
        record = records[index]
        entry = [(gts[index], GREEN)]
        if record.image_id in loc_boxes:
            entry.append((loc_boxes[record.image_id], BLUE))
        entry.append((boxes[index], RED))
        images.append(image)
        sets.append(entry)
        ids.append(record.image_id)
        map_path = scoremap_path(maps_dir, record.image_id)
        maps.append(load_scoremap(maps_dir, record.image_id, args.input_size)
                    if loc_boxes and map_path.is_file() else None)
    if images:
        legend = [("ground-truth box", GREEN)] + ([("localizer-map box", BLUE)] if loc_boxes else []) \
            + [("regressor box (prediction)", RED)]
        title = f"SLT-Net final test, {args.split} split ({canonical(args.protocol)} protocol, {args.input_size} px)"
        atomic_save_png(path, box_grid(images, sets, ids=ids, scoremaps=maps, legend=legend, title=title))


if __name__ == "__main__":
    run_cli(main, get_args_parser, STAGE, args=ARGS)
