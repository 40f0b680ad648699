"""Benchmark: the stages' importable inference loops against the bare forward pass of the same model.

For each loop, images/s of the stage's own code (data loading, forward, post-processing, writing
its outputs, as the test step does) next to images/s of the bare ``model(images)`` on the same
batches already in memory; the ratio of the two throughputs (stage img/s over bare img/s; bar
>= 0.9 on CPU and on a GPU) shows what everything but the network costs. The bare pass runs under
``torch.no_grad``, the stage loops under ``torch.inference_mode`` (``utils.engine.inference``); both after
``--warmup`` untimed runs each, then interleaved for ``--repeats`` rounds (``benchmarks/timing.py``);
the table gives the medians and the median of the per-round ratios with its spread (min-max), so
a load change between two runs cannot pass for a speed difference.

    cls test        utils.engine.classify.write_classification (top-5 -> predictions.csv; SPOL cls and SLT-Net
                    classifier test)                                                 vs the classifier
    spol cam/test   spol.cam.test.write_pseudo_masks  (CAMs -> max-norm -> Gaussian prior -> PNG) vs CAMModel.cam
    spol seg/test   spol.seg.test.stream_scoremaps    (sigmoid maps -> evaluator in memory, .npy)  vs SegModel
    sltnet loc/test sltnet.localizer.test.localize    (top-K ACAM maps -> boxes)                 vs CAMLocalizer
    sltnet reg/test sltnet.regressor.test.regressor_step + regressor_on_host (boxes, grid images) vs BoxRegressor
    utils.evaluation.evaluate  evaluate_scoremaps on the seg maps (MaxBoxAcc, MaxBoxAccV2, PxAP sweep)     (no model)

Every stage loop is ``utils.engine.inference.run_inference``: the host work of a batch (copy to the host,
boxes, writing files) runs on its consumer thread while the next batch is loaded and run, and with
``--workers 0`` one thread loads the next batch. The table also gives, per stage run (medians),
the seconds the consumer worked on its thread and the seconds the loop waited for it or for a
batch (``utils.engine.inference.last_stats``): where the time goes beyond the network.

The classifier and SLT-Net stages read uint8 images and normalise them on the batch (as their
test steps do: ``build_transform(normalize=False)``); the SPOL stages use the SPOL authors'
per-image pipeline (normalise, then resize). The bare pass gets batches already normalised.

Models are randomly initialised (speed does not depend on the weights). Data: generated birds
(``utils.data.generate``) in a temporary folder.

    python benchmarks/bench_inference.py                                  # CPU, 64 images, 64 px
    python benchmarks/bench_inference.py --device cuda --amp bf16 --num-images 2048 --size 224 --batch-size 64
    python benchmarks/bench_inference.py --json bench_inference.json
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

# run by its path: the repository root first on sys.path (its packages), then benchmarks/ (timing.py)
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from utils.data.dataset import WSOLDataset
from utils.data.layouts import load_records, num_classes
from utils.data.transforms import build_transform
from utils.engine.distributed import DistContext
from utils.engine.device import autocast
from utils.data.generate import generate_dataset
from utils.engine.inference import last_stats
from utils.io import atomic_write_json

from timing import interleaved, paired_ratios, spread  # noqa: E402  (benchmarks/timing.py)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-images", type=int, default=64, help="test images (generated)")
    p.add_argument("--size", type=int, default=64, help="image and input size")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--device", type=str, default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--amp", type=str, default="off", choices=["off", "bf16"])
    p.add_argument("--workers", type=int, default=0, help="data loader workers of the stage loops")
    p.add_argument("--repeats", type=int, default=7,
                   help="timed rounds, stage and bare interleaved (the median and spread are printed)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of each variant first")
    p.add_argument("--only", type=str, nargs="*", default=None,
                   help="subset of: cls spol_cam spol_seg sltnet_localizer sltnet_regressor evaluate")
    p.add_argument("--json", type=str, default=None, help="also write the figures to this JSON file")
    return p


def bare_forward(forward, batches, ctx: DistContext, amp: str):
    """The bare forward pass over batches already on the device."""
    @torch.no_grad()
    def run():
        for images in batches:
            with autocast(ctx, amp):
                forward(images)
    return run


def device_batches(records, size: int, batch_size: int, device) -> list:
    dataset = WSOLDataset(records, build_transform("resize", resize=size))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    return [b["image"].to(device) for b in loader]


def main(args) -> list[dict]:
    device = torch.device(args.device)
    ctx = DistContext(device=device)
    only = set(args.only or ["cls", "spol_cam", "spol_seg", "sltnet_localizer", "sltnet_regressor", "evaluate"])
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
        tmp = Path(tmp)
        per_class = max(1, -(-args.num_images // args.classes))
        root = generate_dataset(tmp / "data", num_classes=args.classes, train_per_class=0,
                                test_per_class=per_class, image_size=args.size, seed=0)
        records = load_records(root, "cub", "test")[: args.num_images]
        n, k = len(records), num_classes(load_records(root, "cub", "test"))
        batches = device_batches(records, args.size, args.batch_size, device)
        stage_args = SimpleNamespace(resize_size=args.size, input_size=args.size, batch_size=args.batch_size,
                                     workers=args.workers, mask_workers=os.cpu_count() or 1, amp=args.amp,
                                     band=(0.1, 0.5), min_contour_area=20, degenerate_contours="skip")

        def measure(name, stage_fn, bare_fn, what):
            loop_stats = []

            def stage():
                stage_fn()
                loop_stats.append(last_stats())

            variants = {"stage": stage} if bare_fn is None else {"stage": stage, "bare": bare_fn}
            times = interleaved(variants, repeats=args.repeats, warmup=args.warmup, device=device)
            loop_stats = loop_stats[args.warmup:] if bare_fn is not None else []
            row = {"loop": name, "images": n, "what": what, "stage_s": times["stage"],
                   "stage_images_per_s": n / spread(times["stage"])["median"],
                   "bare_s": times.get("bare"), "bare_images_per_s": None, "throughput_ratio": None}
            if bare_fn is not None:
                ratios = paired_ratios(times["stage"], times["bare"])
                row.update(bare_images_per_s=n / spread(times["bare"])["median"],
                           throughput_ratio=spread(ratios)["median"], ratio_spread=spread(ratios),
                           per_round_ratios=ratios)
            if loop_stats:
                row["loop_s"] = {k: spread([st[k] for st in loop_stats])["median"]
                                 for k in ("load_wait_s", "step_s", "consume_s", "consume_wait_s")}
            rows.append(row)

        if "cls" in only:
            from network.backbones import build_classifier
            from utils.engine.classify import write_classification
            model = build_classifier("resnet50", k, "none").to(device).eval()
            cls_args = SimpleNamespace(input_size=args.size, ten_crop=False, batch_size=args.batch_size,
                                       workers=args.workers, amp=args.amp)
            transform = build_transform("resize", resize=args.size, normalize=False)  # as eval_transform
            measure("cls test (ResNet-50, top-5, predictions.csv)",
                    lambda: write_classification(model, records, transform, cls_args, ctx, tmp / "predictions.csv"),
                    bare_forward(model, batches, ctx, args.amp), "top-5 + predictions.csv vs the classifier")
        if "spol_cam" in only:
            from spol.cam.test import write_pseudo_masks
            from spol.model import CAMModel
            model = CAMModel(k, pretrained="none").to(device).eval()
            measure("spol cam/test (pseudo masks)",
                    lambda: write_pseudo_masks(model, records, stage_args, ctx, tmp / "masks"),
                    bare_forward(model.cam, batches, ctx, args.amp), "CAM + max-norm + Gaussian + PNG vs CAMModel.cam")
        if "spol_seg" in only or "evaluate" in only:
            from spol.model import SegModel
            from spol.seg.test import new_evaluator, stream_scoremaps
            model = SegModel(pretrained="none").to(device).eval()
            seg_args = SimpleNamespace(**vars(stage_args), cam_curve_interval=0.001, iou_threshold=0.5,
                                       iou_compare=None, iou_convention="inclusive", eval_workers=0)

            def stage_fn():  # the seg test's loop: every map to the evaluator (sweep, PxAP) in memory, and .npy
                with new_evaluator(records, "wsol", seg_args, split="test") as evaluator:
                    stream_scoremaps(model, records, "wsol", evaluator, seg_args, ctx, maps_dir=tmp / "seg_maps")
                    evaluator.compute()

            if "spol_seg" in only:
                measure("spol seg/test (maps scored in memory)", stage_fn, bare_forward(model, batches, ctx, args.amp),
                        "sigmoid maps + evaluator + .npy vs SegModel")
            else:
                stage_fn()  # the maps the evaluator reads
        if "sltnet_localizer" in only:
            from sltnet.localizer.test import localize
            from sltnet.model import CAMLocalizer
            model = CAMLocalizer("resnet50", k, pretrained="none", feature="layer2").to(device).eval()
            loc_args = SimpleNamespace(input_size=args.size, acam=True, top_k=min(2, k), box_threshold=0.2,
                                       box_rule="zhou",
                                       batch_size=args.batch_size, workers=args.workers, amp=args.amp)
            dataset = WSOLDataset(records, build_transform("resize", resize=args.size, normalize=False))
            measure("sltnet localizer/test (ResNet-50 to layer2)", lambda: localize(model, dataset, ctx, loc_args),
                    bare_forward(model, batches, ctx, args.amp), "top-K ACAM + boxes vs CAMLocalizer")
        if "sltnet_regressor" in only:
            from functools import partial

            from sltnet.model import BoxRegressor
            from sltnet.regressor.test import regressor_on_host, regressor_step
            from utils.engine.inference import run_inference
            model = BoxRegressor("resnet50", pretrained="none").to(device).eval()
            dataset = WSOLDataset(records, build_transform("resize", resize=args.size, normalize=False))
            step = partial(regressor_step, predict=lambda m, x: m(x), divisor=8.0, input_size=args.size)
            measure("sltnet regressor/test (ResNet-50 regressor)",
                    lambda: run_inference(model, dataset, step, ctx, batch_size=args.batch_size, workers=args.workers,
                                          amp=args.amp, consume=partial(regressor_on_host, grid_images=8)),
                    bare_forward(model, batches, ctx, args.amp), "boxes + grid images vs BoxRegressor")
        if "evaluate" in only:
            from utils.evaluation.evaluate import evaluate_scoremaps
            measure("utils.evaluation.evaluate (interval 0.001)",
                    lambda: evaluate_scoremaps(records, tmp / "seg_maps", "wsol", input_size=args.size), None,
                    "GT-known, MaxBoxAcc(V2), PxAP per image")
    print_table(rows, args)
    if args.json:
        atomic_write_json(args.json, {"machine": machine(args), "args": vars(args), "rows": rows})
    return rows


def machine(args) -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": args.device, "amp": args.amp}
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def print_table(rows, args) -> None:
    print(f"\n{args.device} ({torch.get_num_threads()} threads), amp {args.amp}, {args.size}x{args.size}, "
          f"batch {args.batch_size}, {args.warmup} warm-up + {args.repeats} interleaved rounds (medians)")
    print(f"{'loop':46s} {'images':>6s} {'stage img/s':>12s} {'bare img/s':>11s} {'ratio':>6s} {'q1-q3':>10s} "
          f"{'min-max':>10s} {'host s':>7s} {'waits s':>8s}")
    for r in rows:
        bare = "—" if r["bare_images_per_s"] is None else f"{r['bare_images_per_s']:.1f}"
        ratio = "—" if r["throughput_ratio"] is None else f"{r['throughput_ratio']:.2f}"
        sp = r.get("ratio_spread")
        iqr = "—" if sp is None else f"{sp['q1']:.2f}-{sp['q3']:.2f}"
        rng = "—" if sp is None else f"{sp['min']:.2f}-{sp['max']:.2f}"
        ls = r.get("loop_s")
        host = "—" if ls is None else f"{ls['consume_s']:.3f}"
        waits = "—" if ls is None else f"{ls['load_wait_s'] + ls['consume_wait_s']:.3f}"
        print(f"{r['loop']:46s} {r['images']:6d} {r['stage_images_per_s']:12.1f} {bare:>11s} {ratio:>6s} {iqr:>10s} "
              f"{rng:>10s} {host:>7s} {waits:>8s}")
    print("host s: the consumer thread's work per stage run (copy to host, boxes, files); waits s: the loop "
          "waiting for a batch or for the consumer (medians)")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
