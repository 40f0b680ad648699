"""Benchmark: the MaxBoxAcc / MaxBoxAccV2 threshold sweep (``utils.evaluation.metrics.best_iou_per_threshold``,
one pass over the map's level sets) vs Choe et al.'s per-threshold contour loop
(``reference_best_iou_per_threshold``), on the same synthetic score maps, as ratios.

Maps are smooth blobs (1-3 Gaussians plus a bilinearly upsampled 14 x 14 random field, min-max
normalised), like upsampled CAMs; each image gets 1-2 random GT boxes. For every cam-curve interval
and mode (largest contour = MaxBoxAcc, every contour = MaxBoxAccV2, both together as
``utils.evaluation.evaluate`` asks), ``--rounds`` rounds each run the reference loop and the sweep on each of
the first ``--reference-images`` maps back to back (the order alternates from map to map and from
round to round, so both see the same machine load) and compare the per-threshold IoUs exactly
(``np.array_equal``). A round's ratio is the reference's total seconds over the sweep's on those
maps (after one untimed call of each); the table gives the median over the rounds (min-max), and
the ratio of the per-map best times (each map's fastest reference run over the rounds, summed,
over its fastest sweep run, summed: the cost ratio with the load spikes of a shared machine left
out). The sweep then runs alone on all ``--num-images`` maps (both modes, as ``utils.evaluation.evaluate``)
for its throughput and the scores.

    python benchmarks/bench_evaluator.py                                    # 5000 maps, 224 x 224
    python benchmarks/bench_evaluator.py --num-images 200 --reference-images 20 --json bench.json
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

# run by its path: the repository root first on sys.path (its packages), then benchmarks/ (timing.py)
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from utils.io import atomic_write_json
from utils.evaluation.metrics import (BoxAccumulator, best_iou_per_threshold, cam_threshold_list,
                                      reference_best_iou_per_threshold)

from timing import paired_ratios, spread  # noqa: E402  (benchmarks/timing.py)

MODES = (("largest", (False,)), ("multi", (True,)), ("both", (False, True)))


def synthetic_map(seed: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One smooth score map (float32, [0, 1], max 1) and its GT boxes, reproducible from (seed, index)."""
    rng = np.random.default_rng([seed, index])
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    m = np.zeros((size, size), np.float32)
    for _ in range(rng.integers(1, 4)):
        cx, cy = rng.uniform(0.1, 0.9, 2) * size
        sx, sy = rng.uniform(0.04, 0.25, 2) * size
        m += rng.uniform(0.3, 1.0) * np.exp(-((xx - cx) ** 2 / (2 * sx * sx) + (yy - cy) ** 2 / (2 * sy * sy)))
    field = rng.random((14, 14)).astype(np.float32)
    m += 0.15 * cv2.resize(field, (size, size), interpolation=cv2.INTER_LINEAR)
    m = (m - m.min()) / (m.max() - m.min())
    boxes = []
    for _ in range(rng.integers(1, 3)):
        w, h = rng.uniform(0.2, 0.8, 2) * size
        x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
        boxes.append([int(x0), int(y0), int(x0 + w), int(y0 + h)])
    return m.astype(np.float32), np.asarray(boxes)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-images", type=int, default=5000, help="maps the sweep alone runs on")
    p.add_argument("--reference-images", type=int, default=50,
                   help="maps on which the reference loop and the sweep are timed side by side")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the side-by-side timing")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--intervals", type=float, nargs="+", default=[0.001, 0.01],
                   help="cam-curve intervals (Choe et al.'s default 0.001)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=100, help="maps generated per chunk (generation is not timed)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return p


def side_by_side(maps, thresholds, modes, flip: bool) -> tuple[list, list, bool]:
    """Seconds of the reference and of the sweep on each map (run back to back, the order
    alternating from map to map), and whether every per-threshold IoU is identical."""
    ref_s, fast_s = [], []
    identical = True
    for k, (scoremap, gt) in enumerate(maps):
        for which in (("ref", "sweep") if (k + flip) % 2 == 0 else ("sweep", "ref")):
            t0 = time.perf_counter()
            if which == "ref":
                ref = {m: reference_best_iou_per_threshold(scoremap, gt, thresholds, m) for m in modes}
                ref_s.append(time.perf_counter() - t0)
            else:
                fast = best_iou_per_threshold(scoremap, gt, thresholds, modes)
                fast_s.append(time.perf_counter() - t0)
        identical &= all(np.array_equal(fast[m], ref[m]) for m in modes)
    return ref_s, fast_s, identical


def main(args) -> dict:
    cv2.setNumThreads(1)
    n, k = args.num_images, min(args.reference_images, args.num_images)
    reference_maps = [synthetic_map(args.seed, i, args.size) for i in range(k)]
    rows, identical = [], True
    warm_up = reference_maps[0]  # one untimed call of each first
    best_iou_per_threshold(*warm_up, cam_threshold_list(args.intervals[0]), (False, True))
    reference_best_iou_per_threshold(*warm_up, cam_threshold_list(args.intervals[0]), False)
    for interval in args.intervals:
        thresholds = cam_threshold_list(interval)
        for label, modes in MODES:
            ref_s, fast_s, same = [], [], True
            for r in range(args.rounds):
                ref, fast, ok = side_by_side(reference_maps, thresholds, modes, flip=(r + (label == "multi")) % 2 == 1)
                ref_s.append(ref)
                fast_s.append(fast)
                same &= ok
            identical &= same
            rows.append({"interval": interval, "mode": label, "images": k, "rounds": args.rounds,
                         "ratio_per_round": spread(paired_ratios([sum(f) for f in fast_s], [sum(r) for r in ref_s])),
                         "ratio_best_per_map": float(np.min(ref_s, axis=0).sum() / np.min(fast_s, axis=0).sum()),
                         "identical": same, "reference_seconds": ref_s, "sweep_seconds": fast_s})
    # the sweep alone on all maps, both modes at once (utils.evaluation.evaluate), at the first interval
    thresholds = cam_threshold_list(args.intervals[0])
    acc = {m: BoxAccumulator(args.intervals[0], (30, 50, 70), m) for m in (False, True)}
    sweep_s = 0.0
    for start in range(0, n, args.chunk):
        batch = [synthetic_map(args.seed, i, args.size) for i in range(start, min(start + args.chunk, n))]
        t0 = time.perf_counter()
        for scoremap, gt in batch:
            both = best_iou_per_threshold(scoremap, gt, thresholds, (False, True))
            for m in (False, True):
                acc[m].accumulate_ious(both[m])
        sweep_s += time.perf_counter() - t0
    result = {"num_images": n, "reference_images": k, "size": args.size, "rows": rows,
              "identical_on_reference_images": identical,
              "sweep_all_maps": {"interval": args.intervals[0], "seconds": sweep_s, "images_per_s": n / sweep_s},
              "maxboxacc": acc[False].compute()["max_box_acc"][50],
              "maxboxacc_v2": acc[True].compute()["mean_max_box_acc"],
              "machine": f"{platform.processor() or platform.machine()}, cv2 {cv2.__version__} "
                         f"(1 thread), numpy {np.__version__}"}

    print(f"{k} synthetic {args.size}x{args.size} maps, {args.rounds} rounds of the reference loop and the sweep "
          f"back to back per map ({result['machine']})")
    print("ratio = reference seconds / sweep seconds on the same maps: median over the rounds (min-max), "
          "and from each map's best time over the rounds")
    print(f"{'mode':<9}{'interval':>9}{'ref ms/map':>12}{'sweep ms/map':>14}{'ratio, rounds':>23}{'best':>8}{'same':>6}")
    for label, _ in MODES:
        for interval in args.intervals:
            r = next(x for x in rows if x["mode"] == label and x["interval"] == interval)
            pr = r["ratio_per_round"]
            ref_ms = np.median([sum(x) for x in r["reference_seconds"]]) / k * 1e3
            sweep_ms = np.median([sum(x) for x in r["sweep_seconds"]]) / k * 1e3
            print(f"{label:<9}{interval:>9}{ref_ms:>12.1f}{sweep_ms:>14.2f}"
                  f"{pr['median']:>9.1f}x ({pr['min']:.1f}-{pr['max']:.1f}){r['ratio_best_per_map']:>7.1f}x"
                  f"{'yes' if r['identical'] else 'NO':>6}")
    print(f"sweep alone, both modes, interval {args.intervals[0]}: {n} maps in {sweep_s:.1f} s "
          f"({n / sweep_s:.0f} maps/s); MaxBoxAcc {result['maxboxacc']:.2f}  MaxBoxAccV2 {result['maxboxacc_v2']:.2f}")
    if args.json:
        atomic_write_json(args.json, result)
    if not identical:
        raise SystemExit("sweep and reference results differ")
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
