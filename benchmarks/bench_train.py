"""Benchmark: a stage's training step against the bare forward + backward of the same model.

The stage step is ``utils.engine.trainer.Trainer.train_step`` with the stage's own loss function, built
from the stage script's own options (``parse_args(get_args_parser(), argv, stage=...)``); the bare
step is zero_grad -> forward -> cross entropy on the logits -> backward -> optimizer step, on the
same batches already in memory. The throughput ratio (stage img/s over bare img/s; bar >= 0.9)
shows what the method adds (SLT-Net: a second
forward pass for VST, SMT, the regressor; SPOL: the second head and soft cross entropy).
After two untimed steps of each, the two variants run ``--steps`` steps in turn for ``--repeats``
interleaved rounds (``benchmarks/timing.py``); the table gives median seconds per step and the
median of the per-round ratios with its spread (min-max).

    sltnet_localizer  sltnet.localizer.train: L_SMT + beta L_VST + L_REG  (ResNet-50 to layer2, shared backbone)
    spol_cam          spol.cam.train: (CE(deep) + softCE(fused)) / 2      (SPOL CAM model, ResNet-50)

    python benchmarks/bench_train.py                                   # CPU, 64 px, batch 16
    python benchmarks/bench_train.py --device cuda --amp bf16 --size 224 --batch-size 32 --steps 20
    python benchmarks/bench_train.py --stages spol_cam --json bench_train.json
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

# run by its path: the repository root first on sys.path (its packages), then benchmarks/ (timing.py)
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from utils.config import parse_args
from utils.data.dataset import WSOLDataset
from utils.data.layouts import load_records, num_classes
from utils.data.transforms import build_transform
from utils.engine.distributed import DistContext
from utils.engine.device import autocast, move_to_device
from utils.engine.trainer import Trainer, build_optimizer
from utils.data.generate import generate_dataset
from utils.io import atomic_write_json

from timing import interleaved, paired_ratios, spread  # noqa: E402  (benchmarks/timing.py)

STAGES = ("sltnet_localizer", "spol_cam")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stages", type=str, nargs="*", default=list(STAGES), choices=STAGES)
    p.add_argument("--size", type=int, default=64, help="image and crop size")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=4, help="timed steps per variant and round (after 2 warm-up steps)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds (median and spread printed)")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--device", type=str, default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--amp", type=str, default="off", choices=["off", "bf16"])
    p.add_argument("--json", type=str, default=None, help="also write the figures to this JSON file")
    return p


def build(stage: str, data_root: Path, out: Path, args, records):
    """(model, optimizer, loss_fn, logits_fn, stage args) exactly as the stage's main() builds them."""
    common = ["--data-root", data_root, "--pretrained", "none", "--device", args.device, "--amp", args.amp,
              "--batch-size", args.batch_size, "--output-dir", out / stage]
    k = num_classes(records)
    if stage == "sltnet_localizer":
        from sltnet.localizer import train
        from sltnet.model import build_branch
        from sltnet.options import resolve_defaults
        sargs = resolve_defaults(parse_args(train.get_args_parser(), [str(a) for a in common + [
            "--backbone", "resnet50", "--cam-feature", "layer2", "--share-backbone", "--top-k", min(2, k),
            "--input-size", args.size, "--resize-size", args.size]], stage="localizer_train"), "localizer")
        model = build_branch(sargs, k)
        optimizer = build_optimizer(model.param_groups(sargs.lr), sargs)
        return model, optimizer, train.make_branch_loss(sargs, model.localizer.stride), lambda m, x: m(x)["logits"], sargs
    from spol.cam import train
    from spol.losses import map_logits
    from spol.model import CAMModel, spol_param_groups
    sargs = parse_args(train.get_args_parser(), [str(a) for a in common], stage="cam_train")
    model = CAMModel(k, pretrained="none")
    optimizer = build_optimizer(spol_param_groups(model, sargs.lr, sargs.backbone_lr_mult, sargs.weight_decay), sargs)
    return model, optimizer, train.cam_loss_fn(sargs.loss), lambda m, x: map_logits(m(x)[1]), sargs


def steps_fn(step, batches, steps: int):
    """``steps`` calls of ``step`` on the batches in turn (one timed unit)."""
    def run():
        for i in range(steps):
            step(batches[i % len(batches)])
    return run


def main(args) -> list[dict]:
    device = torch.device(args.device)
    ctx = DistContext(device=device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        tmp = Path(tmp)
        per_class = max(1, -(-args.batch_size * 3 // args.classes))
        root = generate_dataset(tmp / "data", num_classes=args.classes, train_per_class=per_class,
                                test_per_class=0, image_size=args.size, seed=0)
        records = load_records(root, "cub", "train")
        dataset = WSOLDataset(records, build_transform("train", resize=args.size, crop=args.size, flip=True))
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=False, drop_last=True)
        batches = [move_to_device(b, device) for b in loader]
        for stage in args.stages:
            model, optimizer, loss_fn, logits_fn, sargs = build(stage, root, tmp, args, records)
            trainer = Trainer(model, optimizer, sargs, ctx, stage_name=stage)
            model.train()

            def bare(batch):
                optimizer.zero_grad(set_to_none=True)
                with autocast(ctx, args.amp):
                    logits = logits_fn(model, batch["image"])
                F.cross_entropy(logits.float(), batch["label"]).backward()
                optimizer.step()

            for batch in batches[:2]:  # warm-up
                trainer.train_step(batch, loss_fn)
                bare(batch)
            times = interleaved({"stage": steps_fn(lambda b: trainer.train_step(b, loss_fn), batches, args.steps),
                                 "bare": steps_fn(bare, batches, args.steps)},
                                repeats=args.repeats, warmup=0, device=device)
            ratios = paired_ratios(times["stage"], times["bare"])
            stage_s = spread(times["stage"])["median"] / args.steps
            bare_s = spread(times["bare"])["median"] / args.steps
            rows.append({"stage": stage, "batch_size": args.batch_size, "stage_step_s": stage_s,
                         "bare_step_s": bare_s, "stage_images_per_s": args.batch_size / stage_s,
                         "bare_images_per_s": args.batch_size / bare_s, "throughput_ratio": spread(ratios)["median"],
                         "ratio_spread": spread(ratios), "per_round_ratios": ratios})
    print(f"\n{args.device} ({torch.get_num_threads()} threads), amp {args.amp}, {args.size}x{args.size}, "
          f"batch {args.batch_size}, {args.repeats} interleaved rounds of {args.steps} steps (medians)")
    print(f"{'stage':18s} {'step s':>8s} {'img/s':>8s} {'bare step s':>12s} {'bare img/s':>11s} {'ratio':>6s} "
          f"{'q1-q3':>10s} {'min-max':>10s}")
    for r in rows:
        sp = r["ratio_spread"]
        iqr, rng = f"{sp['q1']:.2f}-{sp['q3']:.2f}", f"{sp['min']:.2f}-{sp['max']:.2f}"
        print(f"{r['stage']:18s} {r['stage_step_s']:8.3f} {r['stage_images_per_s']:8.1f} {r['bare_step_s']:12.3f} "
              f"{r['bare_images_per_s']:11.1f} {r['throughput_ratio']:6.2f} {iqr:>10s} {rng:>10s}")
    if args.json:
        machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                   "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
        if args.device == "cuda":
            machine["gpu"] = torch.cuda.get_device_name()
        atomic_write_json(args.json, {"machine": machine, "args": vars(args), "rows": rows})
    return rows


if __name__ == "__main__":
    main(get_args_parser().parse_args())
