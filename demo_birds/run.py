"""The whole demo in order (``python3 demo.py``; see its docstring): dataset and pretraining, every
stage script, the class read-out of plain CAM, every row scored, ``results.json`` and the report."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from demo_birds.plan import ABLATION_ROWS, run_stage, stage_plan
from demo_birds.prepare import prepare_data, prepare_pretrained
from demo_birds.readout import cam_predictions
from demo_birds.report import grid_samples, markdown_table, seed_spread, write_report
from demo_birds.scoring import centre_box_map, choose_centre_fraction, score_row, train_threshold
from demo_birds.settings import resolve_settings
from utils.io import atomic_write_json
from utils.data.layouts import load_records, num_classes
from utils.evaluation.handoff import read_boxes_csv
from utils.paths import DATASET_DIR
from utils.evaluation.protocol import get_protocol

CAM_ROW = "CAM, new optimization (SLT-Net's recipe)"
AGGRESSIVE_ROW = "CAM, aggressive fine-tuning"
SLT_MAP_ROW = "SLT-Net map (SMT + top-K ACAM + VST)"
SLT_FINAL_ROW = "SLT-Net final (regressor box, classifier class)"
SPREAD_METRICS = ("gt_known_loc", "top1_cls", "maxboxacc_v2")


def check_folders(args) -> None:
    """Before any work: ``--output-dir`` and ``--data-out`` can be written (``utils.paths.check_output_path``),
    and the output folder is not the dataset's folder, inside it or around it (``utils.engine.rundir.check_output_dir``)."""
    from utils.paths import check_output_path
    from utils.engine.rundir import check_output_dir

    check_output_path(args.output_dir, "--output-dir")
    if args.data_out:
        check_output_path(args.data_out, "--data-out")
    data = args.data_root or args.data_out or DATASET_DIR / ("demo_birds_tiny" if args.tiny else "demo_birds")
    check_output_dir(argparse.Namespace(output_dir=args.output_dir, data_root=str(data)))


def main(args) -> dict | None:
    """The whole demo (``args``: :func:`demo_birds.settings.get_args_parser`'s) at each of the
    settings' seeds (each seed generates another dataset; the stage seeds stay those of the config).
    One seed: everything in ``--output-dir``. Several: ``<output-dir>/seed<N>/`` each, then the
    combined ``results.json`` / ``report.md`` (the first seed's table, every seed's spread) in
    ``--output-dir``. Returns what that ``results.json`` holds on rank 0, None on the other ranks."""
    s = resolve_settings(args)
    check_folders(args)
    if len(s["seeds"]) == 1:
        return run_seed(args, {**s, "seed": s["seeds"][0]}, Path(args.output_dir), args.data_out)
    out = Path(args.output_dir)
    data_base = Path(args.data_out) if args.data_out else DATASET_DIR / ("demo_birds_tiny" if args.tiny else "demo_birds")
    runs = []
    for seed in s["seeds"]:
        data_out = None if args.data_root else str(data_base.with_name(f"{data_base.name}_seed{seed}"))
        runs.append(run_seed(args, {**s, "seed": seed}, out / f"seed{seed}", data_out))
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    results = dict(runs[0])
    results["title"] += f" (seeds {', '.join(map(str, s['seeds']))})"
    results["seed_spread"] = {metric: seed_spread(runs, metric) for metric in SPREAD_METRICS}
    results["seed_results"] = [str(out / f"seed{seed}" / "results.json") for seed in s["seeds"]]
    figures = runs[0].get("figures", {})
    results["figures"] = {k: f"seed{s['seeds'][0]}/{v}" for k, v in figures.items()}
    paths = write_report(results, out)
    print(f"demo: seeds {s['seeds']}; report {paths['report']}", flush=True)
    return results


def map_rows(runs: Path, s: dict) -> list[tuple]:
    """(row, kind of map, test maps, training-split maps, predictions, notes) of every row scored
    from score maps, in table order."""
    slt = runs / "sltnet"
    classes = s["families"] * s["species"]
    k = f"top-{max(1, int(s['top_k_ratio'] * classes + 0.5))} ACAM (Eq. 9: the predicted classes)"
    rows = [(CAM_ROW, "GT-class CAM", runs / "cam" / "localizer", None,
             "plain CAM: the SLT-Net localizer with SMT, top-K ACAM and VST off, fine-tuned with SLT-Net's own "
             "low-lr recipe (its Table 5 'new optimization' row); classes from its own logits")]
    if s["aggressive_epochs"] > 0:
        rows.append((AGGRESSIVE_ROW, "GT-class CAM", runs / "cam_aggressive" / "localizer", None,
                     f"the same plain CAM fine-tuned aggressively: every layer at lr {s['aggressive_lr']} for "
                     f"{s['aggressive_epochs']} epochs; classes from its own logits"))
    if s["ablation"]:
        for label, folder, switches, test_map in ABLATION_ROWS:
            rows.append((f"SLT-Net {label}", k if test_map == "--acam" else "GT-class CAM", runs / folder / "localizer",
                         None, f"the localizer of the new optimization with {' '.join(switches)}; classes from its "
                               "own logits"))
    rows.append((SLT_MAP_ROW, k, slt / "localizer", None,
                 "the full localizer (L_SMT + beta L_VST, top-K ACAM map); classes from its own logits"))
    rows = [(name, what, folder / "test" / "scoremaps", folder / "train" / "scoremaps", pred, notes)
            for name, what, folder, pred, notes in rows]
    spol_seg = runs / "spol" / "seg" / "wsol"
    rows.append(("SPOL", "class-agnostic segmentation map", spol_seg / "scoremaps",
                 spol_seg / "threshold_split_train" / "scoremaps", runs / "spol" / "cls" / "predictions.csv",
                 "seg-stage map (class-agnostic); classes from the cls stage"))
    return rows


def run_seed(args, s: dict, out: Path, data_out: str | None) -> dict | None:
    """One demo run at ``s["seed"]`` into ``out`` (dataset at ``data_out``, or the default folder)."""
    start = time.perf_counter()
    rank = int(os.environ.get("RANK", "0"))
    data_root = prepare_data(argparse.Namespace(**{**vars(args), "data_out": data_out}), s, rank == 0)
    t0 = time.perf_counter()
    pretrained, pretrain_info = prepare_pretrained(args, s, rank == 0)
    pretrain_seconds = time.perf_counter() - t0
    runs = out / "runs"
    # torchrun ranks start together: the others wait until rank 0 has cleared the old outputs
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "single")
    marker = runs / "demo_started.json"
    if rank == 0:
        if runs.exists() and any(runs.iterdir()) and not marker.is_file():
            # not a folder this demo wrote (no demo_started.json): never delete a user's files
            from utils.errors import DataError
            raise DataError.at(runs, None, "exists and was not written by demo.py (no demo_started.json): "
                               "choose another --output-dir")
        if not args.keep and runs.exists():
            shutil.rmtree(runs)
        atomic_write_json(marker, {"run_id": run_id})
    else:
        while not (marker.is_file() and json.loads(marker.read_text()).get("run_id") == run_id):
            time.sleep(1)
    plan = stage_plan(args.config, str(data_root), runs, s, args.device, args.amp, args.tiny, pretrained)
    stages = [{"name": "pretraining (stand-in, once; reused later)", "seconds": pretrain_seconds}]
    for label, module, stage, argv in plan:
        if rank == 0:
            print(f"\n=== demo (seed {s['seed']}): {label} ({module}) ===", flush=True)
        stages.append({"name": label, "seconds": run_stage(module, stage, argv)})
    if rank != 0:
        return None

    size = s["input_size"]
    test = load_records(data_root, "cub", "test")
    train = load_records(data_root, "cub", "train")
    t0 = time.perf_counter()
    interval = s["cam_curve_interval"]
    rows, thresholds = [], {}
    for name, what, maps, train_maps, predictions, notes in map_rows(runs, s):
        if predictions is None:  # a localizer row: its classes from its own logits
            test_argv = [argv for label, _, _, argv in plan
                         if label.endswith(": localizer test") and Path(argv[argv.index("--output-dir") + 1]) == maps.parent][0]
            predictions = cam_predictions(test_argv, test, maps.parent.parent / "predictions.csv")
        t, train_acc = train_threshold(train, train_maps, size, interval)
        thresholds[name] = t
        row = score_row(name, "method", test, maps, size, threshold=t, predictions=predictions, interval=interval,
                        threshold_source="train split", output_dir=Path(maps).parent)
        at_fixed = float(np.interp(s["box_threshold"], row["curve"]["thresholds"], row["curve"]["gt_known"]))
        row["map"] = what
        row["notes"] = (f"{notes}. Threshold {t:.3f} = best GT-known on the training split's boxes "
                        f"({train_acc:.1f}% there); at the papers' fixed {s['box_threshold']}: {at_fixed:.1f}% "
                        "GT-known on test")
        rows.append(row)
    final = json.loads((runs / "sltnet" / "regressor" / "test" / "metrics.json").read_text())
    teacher = json.loads((runs / "sltnet" / "localizer" / "teacher" / "boxes.json").read_text())
    rows.insert([r["method"] for r in rows].index(SLT_MAP_ROW) + 1, {
        "method": SLT_FINAL_ROW, "kind": "method", "map": "regressor box (class-agnostic)",
        "top1_cls": final["top1_cls"], "top1_loc": final["top1_loc"], "gt_known_loc": final["gt_known_loc"],
        "maxboxacc_v2": None, "pxap": None, "threshold": None, "threshold_source": "", "curve": None,
        "output_dir": str(runs / "sltnet" / "regressor" / "test"),
        "notes": (f"box from the regressor trained alone on the final localizer's training-split boxes (Table 6's "
                  f"path; teacher: {teacher.get('map')} at threshold {teacher.get('box_threshold')}), class from the "
                  "classifier (Fig. 2c); a box, no map: no MaxBoxAccV2 / PxAP")})
    ones = np.ones((size, size), np.float32)
    rows.append(score_row("Whole-image box", "baseline", test, lambda image_id: ones, size, threshold=None,
                          interval=interval, notes="the whole image as the box (a constant map)"))
    fraction, train_acc = choose_centre_fraction(train, size)
    centre = centre_box_map(size, fraction)
    rows.append(score_row(f"Centre box ({fraction:.0%} of the side)", "baseline", test, lambda image_id: centre,
                          size, threshold=None, interval=interval,
                          notes=f"centred square; side fraction chosen on the TRAINING split's boxes "
                                f"({train_acc:.1f}% GT-known there), not on test"))
    masks = {r.image_id: (get_protocol("resize", size).gt_mask(r) > 0).astype(np.float32) for r in test}
    rows.append(score_row("True mask (upper bound)", "upper_bound", test, masks.__getitem__, size, threshold=None,
                          interval=interval,
                          notes="the ground-truth mask as the score map: the best any map can do here"))
    for row in rows:
        row.setdefault("map", "—")
    stages.append({"name": "evaluation", "seconds": time.perf_counter() - t0})

    # the regressor's boxes as it predicted them (an inverted one too: it was scored as such)
    reg_boxes, _ = read_boxes_csv(runs / "sltnet" / "regressor" / "test" / "boxes.csv",
                                  written_by="sltnet/regressor/test.py", allow_inverted=True)
    cam_dir = runs / "cam" / "localizer" / "test"
    agg_dir = runs / "cam_aggressive" / "localizer" / "test"
    grid_methods = {CAM_ROW: {"maps": cam_dir / "scoremaps", "threshold": thresholds[CAM_ROW]},
                    **({AGGRESSIVE_ROW: {"maps": agg_dir / "scoremaps", "threshold": thresholds[AGGRESSIVE_ROW]}}
                       if AGGRESSIVE_ROW in thresholds else {}),
                    "SPOL": {"maps": runs / "spol" / "seg" / "wsol" / "scoremaps", "threshold": thresholds["SPOL"]},
                    "SLT-Net (map; regressor box)": {"maps": runs / "sltnet" / "localizer" / "test" / "scoremaps",
                                                     "threshold": thresholds[SLT_MAP_ROW], "boxes": reg_boxes}}
    samples = grid_samples(test, size, grid_methods, s["grid_images"])
    logs = {label.replace(": ", " ").replace(" train", ""): str(Path(argv[argv.index("--output-dir") + 1]) / "log.jsonl")
            for label, _, stage, argv in plan if stage.endswith("_train")}
    wall = time.perf_counter() - start
    results = {
        "title": "WSOL demo on generated birds" + (" (tiny smoke run)" if args.tiny else ""),
        "dataset": {"root": str(data_root), "train_images": len(train), "test_images": len(test),
                    "classes": num_classes(test), "families": s["families"], "species": s["species"],
                    "input_size": size},
        "protocol": (f"WSOL (Choe et al.): whole image resized to {size}x{size}; box = largest contour of "
                     f"uint8 map > int(t * max); inclusive IoU >= 0.5; every test image counted; "
                     f"GT-known / Top-1 Loc of a map at the threshold that is best on the TRAINING split's "
                     f"boxes (Choe et al. choose it on held-out boxes; never on test)"),
        "settings": s, "device": args.device, "amp": args.amp, "pretrained": pretrained,
        "pretraining": pretrain_info,
        "rows": rows, "stages": stages, "wall_time_s": wall, "loss_logs": logs,
        "notes": ["GT-known-vs-threshold curves: GT-known Loc (IoU >= 0.5, largest contour) at every threshold; "
                  "a method's dot marks the threshold it uses. MaxBoxAccV2 = mean over IoU 30/50/70 of the "
                  "best accuracy over thresholds (all contours), PxAP = pixel average precision (Choe et al.).",
                  "Map: what each GT-known row boxes. A GT-class CAM knows the label; the top-K ACAM rows use "
                  "the localizer's own top-K classes (Eq. 9), as the paper's Table 5 does."],
    }
    paths = write_report(results, out, grid_samples=samples, grid_methods=list(grid_methods))
    print("\n" + markdown_table(rows), end="")
    print(f"demo (seed {s['seed']}): {wall:.0f} s; report {paths['report']}", flush=True)
    return results
