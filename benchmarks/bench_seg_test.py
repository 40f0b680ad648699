"""Benchmark: ``spol/seg/test.py`` end to end, scoring included, against the same script of another
checkout (e.g. another commit in a scratch worktree: ``git worktree add /tmp/old <commit>``), as
a ratio of seconds per image measured side by side.

Each run is the whole test step (``run_cli(main)``, as ``demo.py`` runs it: model load, inference,
both protocols scored, ``metrics.json``, ``boxes.csv``, ``hits.csv``, ``grid.png``, score maps)
in a fresh Python process whose ``sys.path`` starts with the checkout's root; the seconds are those
of ``run_cli`` alone (imports and interpreter start left out). Variants: ``old`` (``--old-tree``),
``new`` (this checkout, score maps saved, as the old one always does) and ``new --no-scoremaps``.
After ``--warmup`` untimed runs of each, ``--repeats`` rounds run every variant once, the order
alternating (``benchmarks/timing.py``); each round gives a ratio old seconds / variant seconds and
the table prints their median and quartiles; the same for the CPU seconds of the process (every
thread: ``time.process_time``), which a shared machine's load moves much less than the wall clock.
The metrics of every variant are compared (``same metrics``: equal to the old checkout's).

Data: generated birds (``utils.data.generate``), ``--num-images`` test images of ``--size`` px with
their segmentations (PxAP), a randomly initialised ``SegModel`` (``--backbone``, seed 0) and a
predictions.csv whose top-1 is the label: numbers are not the point, every image goes through
every step.

    python benchmarks/bench_seg_test.py --old-tree /tmp/old
    python benchmarks/bench_seg_test.py --old-tree /tmp/old --backbone resnet18 --num-images 64 --json seg.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import paired_ratios, spread  # noqa: E402  (benchmarks/timing.py)

RUNNER = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
from utils.config import parse_args
from utils.engine.rundir import run_cli
import spol.seg.test as seg
assert seg.__file__.startswith(sys.argv[1]), seg.__file__
args = parse_args(seg.get_args_parser(), json.loads(sys.argv[2]), stage="seg_test")
start, cpu = time.perf_counter(), time.process_time()
run_cli(seg.main, seg.get_args_parser, "seg_test", args=args)
print("SECONDS", time.perf_counter() - start, time.process_time() - cpu, torch.get_num_threads())
"""
# what a variant's metrics.json must hold equal to the others' (paths and commands left out)
COMPARED = ("top1_loc", "top5_loc", "gt_known_loc", "maxboxacc", "maxboxacc_v2", "pxap", "threshold_used",
            "num_images", "num_counted", "num_skipped")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old-tree", required=True, help="root of the checkout to compare with (its spol/seg/test.py)")
    p.add_argument("--num-images", type=int, default=32)
    p.add_argument("--size", type=int, default=224, help="input size (the resize is size * 8 / 7, as 256 / 224)")
    p.add_argument("--backbone", type=str, default="resnet50", choices=["resnet50", "resnet18"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", type=str, default=None)
    return p


def prepare(tmp: Path, args) -> tuple[Path, Path, Path]:
    import torch

    from spol.model import SegModel
    from utils.data.generate import generate_dataset
    from utils.data.layouts import load_records
    from utils.evaluation.handoff import write_predictions

    classes = 4
    root = generate_dataset(tmp / "data", num_classes=classes, train_per_class=0,
                            test_per_class=-(-args.num_images // classes), image_size=args.size, seed=0)
    records = load_records(root, "cub", "test")
    write_predictions(tmp / "cls" / "predictions.csv", [r.image_id for r in records], [r.label for r in records],
                      [[r.label] for r in records])
    torch.manual_seed(0)
    checkpoint = tmp / "model.pth"
    torch.save(SegModel(pretrained="none", backbone=args.backbone).state_dict(), checkpoint)
    return root, tmp / "cls", checkpoint


def run_variant(tree: Path, argv: list[str]) -> tuple[float, float]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(tree), json.dumps(argv)], cwd=tree, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{tree}: {proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("SECONDS ")][-1].split()
    return float(line[1]), float(line[2])   # wall seconds, CPU seconds of every thread of the process


def main(args) -> dict:
    old_tree = Path(args.old_tree).resolve()
    resize = round(args.size * 8 / 7)
    with tempfile.TemporaryDirectory(prefix="bench_seg_test_") as tmp:
        tmp = Path(tmp)
        root, cls_dir, checkpoint = prepare(tmp, args)
        common = ["--data-root", str(root), "--layout", "cub", "--dataset", "cub", "--device", "cpu", "--workers", "0",
                  "--cls-dir", str(cls_dir), "--checkpoint", str(checkpoint), "--backbone", args.backbone,
                  "--input-size", str(args.size), "--resize-size", str(resize), "--batch-size", str(args.batch_size)]
        variants = {"old": (old_tree, []), "new": (REPO, []), "new --no-scoremaps": (REPO, ["--no-scoremaps"])}
        seconds = {name: [] for name in variants}
        cpu = {name: [] for name in variants}
        names = list(variants)
        for r in range(args.warmup + args.repeats):
            for name in (names if r % 2 == 0 else names[::-1]):
                tree, extra = variants[name]
                out = tmp / "runs" / f"{name.split()[0]}{len(extra)}_{r}"
                took, used = run_variant(tree, common + ["--output-dir", str(out)] + extra)
                if r >= args.warmup:
                    seconds[name].append(took)
                    cpu[name].append(used)
        metrics = {}
        for name, (tree, extra) in variants.items():
            summary = json.loads((tmp / "runs" / f"{name.split()[0]}{len(extra)}_0" / "metrics.json").read_text())
            metrics[name] = {p: {k: summary[p].get(k) for k in COMPARED} for p in ("spol", "wsol")}
    same = {name: metrics[name] == metrics["old"] for name in names}
    n = args.num_images
    rows = []
    for name in names:
        ratios = paired_ratios(seconds[name], seconds["old"])   # old seconds / variant seconds
        cpu_ratios = paired_ratios(cpu[name], cpu["old"])
        rows.append({"variant": name, "seconds": seconds[name], "cpu_seconds": cpu[name],
                     "ms_per_image": 1000 * spread(seconds[name])["median"] / n,
                     "cpu_ms_per_image": 1000 * spread(cpu[name])["median"] / n,
                     "speedup_vs_old": spread(ratios)["median"], "speedup_spread": spread(ratios),
                     "cpu_ratio_vs_old": spread(cpu_ratios)["median"], "cpu_ratio_spread": spread(cpu_ratios),
                     "same_metrics_as_old": same[name]})
    import torch

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "old_tree": str(old_tree)}
    print(f"\nspol/seg/test.py, both protocols, {n} images of {args.size} px, {args.backbone}, batch {args.batch_size}, "
          f"cpu, {info['torch_threads']} torch threads; {args.warmup} warm-up + {args.repeats} interleaved rounds")
    print(f"{'variant':22s} {'ms/image':>9s} {'old s / variant s':>18s} {'q1-q3':>11s} {'CPU ms/image':>13s} "
          f"{'old CPU / variant CPU':>22s} {'q1-q3':>11s} {'same metrics':>13s}")
    for row in rows:
        sp, cp = row["speedup_spread"], row["cpu_ratio_spread"]
        print(f"{row['variant']:22s} {row['ms_per_image']:9.1f} {row['speedup_vs_old']:18.2f} "
              f"{sp['q1']:5.2f}-{sp['q3']:<5.2f} {row['cpu_ms_per_image']:13.1f} {row['cpu_ratio_vs_old']:22.2f} "
              f"{cp['q1']:5.2f}-{cp['q3']:<5.2f} {str(row['same_metrics_as_old']):>13s}")
    print("per-protocol metrics:", json.dumps(metrics["new"]))
    result = {"machine": info, "args": vars(args), "rows": rows, "metrics": metrics}
    if args.json:
        from utils.io import atomic_write_json
        atomic_write_json(args.json, result)
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
