"""Benchmark: fast MaxBoxAcc sweep (contours once per distinct uint8 level) vs the straightforward
per-threshold contour loop of Choe et al.'s evaluator, on the same synthetic score maps.

Maps are smooth blobs (1-3 Gaussians plus a bilinearly upsampled 14 x 14 random field, min-max
normalised), like upsampled CAMs; each image gets 1-2 random GT boxes. The reference loop is slow
(one cv2.findContours per threshold: 1000 per image at interval 0.001), so it is timed on the
first ``--reference-images`` maps and its time for all maps is extrapolated (printed as such).
On those maps the per-threshold IoUs of both paths are compared exactly (np.array_equal).

    python benchmarks/bench_evaluator.py                      # 5000 maps, 224 x 224, interval 0.001
    python benchmarks/bench_evaluator.py --num-images 200 --reference-images 20 --json bench.json
"""
from __future__ import annotations

import argparse
import platform
import time

import cv2
import numpy as np

from utils.io import atomic_write_json
from utils.evaluation.metrics import (BoxAccumulator, best_iou_per_threshold, cam_threshold_list,
                           reference_best_iou_per_threshold)


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
    p.add_argument("--num-images", type=int, default=5000)
    p.add_argument("--reference-images", type=int, default=50,
                   help="maps on which the slow reference loop is timed and compared (extrapolated to all)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--cam-curve-interval", type=float, default=0.001)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=100, help="maps generated per chunk (generation is not timed)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return p


def main(args) -> dict:
    cv2.setNumThreads(1)
    thresholds = cam_threshold_list(args.cam_curve_interval)
    n, k = args.num_images, min(args.reference_images, args.num_images)
    fast = {m: BoxAccumulator(args.cam_curve_interval, (30, 50, 70), m) for m in (False, True)}
    shared = {m: BoxAccumulator(args.cam_curve_interval, (30, 50, 70), m) for m in (False, True)}
    ref = {m: BoxAccumulator(args.cam_curve_interval, (30, 50, 70), m) for m in (False, True)}
    fast_sub = {m: BoxAccumulator(args.cam_curve_interval, (30, 50, 70), m) for m in (False, True)}
    seconds = {"fast_largest": 0.0, "fast_multi": 0.0, "fast_both_shared": 0.0,
               "reference_largest": 0.0, "reference_multi": 0.0,
               "fast_largest_on_reference_maps": 0.0, "fast_multi_on_reference_maps": 0.0}
    identical = True
    for start in range(0, n, args.chunk):
        batch = [synthetic_map(args.seed, i, args.size) for i in range(start, min(start + args.chunk, n))]
        for mode, name in ((False, "fast_largest"), (True, "fast_multi")):
            t0 = time.perf_counter()
            for m, gt in batch:
                fast[mode].accumulate_ious(best_iou_per_threshold(m, gt, thresholds, mode)[mode])
            seconds[name] += time.perf_counter() - t0
        t0 = time.perf_counter()
        for m, gt in batch:  # what utils.evaluation.evaluate does: one contour pass serves both modes
            both = best_iou_per_threshold(m, gt, thresholds, (False, True))
            for mode in (False, True):
                shared[mode].accumulate_ious(both[mode])
        seconds["fast_both_shared"] += time.perf_counter() - t0
        for i, (m, gt) in enumerate(batch, start):
            if i >= k:
                break
            for mode, name in ((False, "reference_largest"), (True, "reference_multi")):
                t0 = time.perf_counter()
                r = reference_best_iou_per_threshold(m, gt, thresholds, mode)
                seconds[name] += time.perf_counter() - t0
                ref[mode].accumulate_ious(r)
                t0 = time.perf_counter()
                f = best_iou_per_threshold(m, gt, thresholds, mode)[mode]
                seconds[f"fast_{name.split('_')[1]}_on_reference_maps"] += time.perf_counter() - t0
                fast_sub[mode].accumulate_ious(f)
                identical &= bool(np.array_equal(f, r))
    for mode in (False, True):
        for iou in (30, 50, 70):
            identical &= bool(np.array_equal(ref[mode].num_correct[iou], fast_sub[mode].num_correct[iou]))
            identical &= bool(np.array_equal(fast[mode].num_correct[iou], shared[mode].num_correct[iou]))

    rows = []
    for mode, label in ((False, "largest"), (True, "multi")):
        ref_ips = k / seconds[f"reference_{label}"]
        fast_ips = n / seconds[f"fast_{label}"]
        rows.append({"path": f"reference loop ({label} contour)", "images": k, "seconds": seconds[f"reference_{label}"],
                     "images_per_s": ref_ips, "extrapolated_seconds_all": n / ref_ips, "speedup": 1.0})
        same_ips = k / seconds[f"fast_{label}_on_reference_maps"]
        rows.append({"path": f"fast sweep ({label} contour), same {k} maps", "images": k,
                     "seconds": seconds[f"fast_{label}_on_reference_maps"], "images_per_s": same_ips,
                     "speedup": same_ips / ref_ips})
        rows.append({"path": f"fast sweep ({label} contour), all maps", "images": n, "seconds": seconds[f"fast_{label}"],
                     "images_per_s": fast_ips, "speedup": fast_ips / ref_ips})
    both_ips = n / seconds["fast_both_shared"]
    ref_both_ips = k / (seconds["reference_largest"] + seconds["reference_multi"])
    rows.append({"path": "fast sweep, both modes sharing contours (utils.evaluation.evaluate)", "images": n,
                 "seconds": seconds["fast_both_shared"], "images_per_s": both_ips, "speedup": both_ips / ref_both_ips})
    v2 = fast[True].compute()
    v1 = fast[False].compute()
    result = {"num_images": n, "reference_images": k, "size": args.size, "cam_curve_interval": args.cam_curve_interval,
              "num_thresholds": len(thresholds), "identical_on_reference_images": identical,
              "maxboxacc": v1["max_box_acc"][50], "maxboxacc_v2": v2["mean_max_box_acc"], "rows": rows,
              "machine": f"{platform.processor() or platform.machine()}, cv2 {cv2.__version__}, 1 cv2 thread"}

    print(f"{n} synthetic {args.size}x{args.size} maps, {len(thresholds)} thresholds (interval "
          f"{args.cam_curve_interval}); reference loop timed on the first {k} maps and extrapolated;")
    print("speed-ups are relative to the reference's images/s on those maps (rows 'same maps' compare like with like)")
    print(f"{'path':<62} {'images':>7} {'seconds':>9} {'img/s':>8} {'speed-up':>9}")
    for r in rows:
        print(f"{r['path']:<62} {r['images']:>7} {r['seconds']:>9.2f} {r['images_per_s']:>8.2f} {r['speedup']:>8.1f}x")
    for label in ("largest", "multi"):
        r = next(x for x in rows if x["path"] == f"reference loop ({label} contour)")
        print(f"reference loop ({label}) on all {n} maps, extrapolated: {r['extrapolated_seconds_all']:.0f} s")
    print(f"MaxBoxAcc {result['maxboxacc']:.2f}  MaxBoxAccV2 {result['maxboxacc_v2']:.2f}  "
          f"fast == reference on the {k} compared maps: {identical}")
    if args.json:
        atomic_write_json(args.json, result)
    if not identical:
        raise SystemExit("fast and reference results differ")
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
