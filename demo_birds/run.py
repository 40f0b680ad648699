"""The whole demo in order (``python3 demo.py``; see its docstring): dataset and pretraining, every
stage script, the class read-out of plain CAM, every row scored, ``results.json`` and the report."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from demo_birds.plan import run_stage, stage_plan
from demo_birds.prepare import prepare_data, prepare_pretrained
from demo_birds.readout import cam_predictions
from demo_birds.report import grid_samples, markdown_table, write_report
from demo_birds.scoring import centre_box_map, choose_centre_fraction, score_row, train_threshold
from demo_birds.settings import resolve_settings
from utils.io import atomic_write_json
from utils.data.layouts import load_records, num_classes
from utils.evaluation.handoff import read_boxes_csv, read_predictions
from utils.evaluation.protocol import get_protocol

CAM_ROW = "CAM, paper's recipe"
AGGRESSIVE_ROW = "CAM, aggressive fine-tuning"


def check_folders(args) -> None:
    """Before any work: ``--output-dir`` and ``--data-out`` can be written (``utils.paths.check_output_path``),
    and the output folder is not the dataset's folder, inside it or around it (``utils.engine.rundir.check_output_dir``)."""
    import argparse

    from utils.paths import DATASET_DIR, check_output_path
    from utils.engine.rundir import check_output_dir

    check_output_path(args.output_dir, "--output-dir")
    if args.data_out:
        check_output_path(args.data_out, "--data-out")
    data = args.data_root or args.data_out or DATASET_DIR / ("demo_birds_tiny" if args.tiny else "demo_birds")
    check_output_dir(argparse.Namespace(output_dir=args.output_dir, data_root=str(data)))


def main(args) -> dict | None:
    """The whole demo (``args``: :func:`demo_birds.settings.get_args_parser`'s); returns what
    ``results.json`` holds on rank 0, None on the other torchrun ranks."""

    start = time.perf_counter()
    s = resolve_settings(args)
    check_folders(args)
    rank = int(os.environ.get("RANK", "0"))
    data_root = prepare_data(args, s, rank == 0)
    t0 = time.perf_counter()
    pretrained, pretrain_info = prepare_pretrained(args, s, rank == 0)
    pretrain_seconds = time.perf_counter() - t0
    out = Path(args.output_dir)
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
            print(f"\n=== demo: {label} ({module}) ===", flush=True)
        stages.append({"name": label, "seconds": run_stage(module, stage, argv)})
    if rank != 0:
        return None

    size, thr = s["input_size"], s["box_threshold"]
    test = load_records(data_root, "cub", "test")
    train = load_records(data_root, "cub", "train")
    cam_dir = runs / "cam" / "localizer" / "test"
    t0 = time.perf_counter()
    cam_pred = cam_predictions(plan[1][3], test, runs / "cam" / "predictions.csv")
    agg_dir = runs / "cam_aggressive" / "localizer"
    agg_plan = [argv for label, _, _, argv in plan if label == "CAM aggressive: localizer test"]
    agg_pred = (cam_predictions(agg_plan[0], test, runs / "cam_aggressive" / "predictions.csv")
                if agg_plan else None)
    stages.append({"name": "CAM: class read-out", "seconds": time.perf_counter() - t0})

    t0 = time.perf_counter()
    interval = s["cam_curve_interval"]
    slt_pred = runs / "sltnet" / "classifier" / "test" / "predictions.csv"
    spol_seg = runs / "spol" / "seg" / "wsol"
    map_methods = [  # name, test maps, training-split maps (threshold choice), predictions, notes
        (CAM_ROW, cam_dir / "scoremaps", runs / "cam" / "localizer" / "train" / "scoremaps", cam_pred,
         "plain CAM: the SLT-Net localizer with SMT, top-K ACAM and VST off, fine-tuned with SLT-Net's own "
         "low-lr recipe (its Table 5 'new optimization' row); ground-truth class CAM; classes from its own logits"),
        *([(AGGRESSIVE_ROW, agg_dir / "test" / "scoremaps", agg_dir / "train" / "scoremaps", agg_pred,
            f"the same plain CAM fine-tuned aggressively: every layer at lr {s['aggressive_lr']} for "
            f"{s['aggressive_epochs']} epochs")] if agg_pred is not None else []),
        ("SPOL", spol_seg / "scoremaps", spol_seg / "threshold_split_train" / "scoremaps",
         runs / "spol" / "cls" / "predictions.csv", "seg-stage map (class-agnostic); classes from the cls stage"),
        ("SLT-Net localizer map", runs / "sltnet" / "localizer" / "test" / "scoremaps",
         runs / "sltnet" / "localizer" / "train" / "scoremaps", slt_pred,
         "top-K ACAM map of the localizer; classes from the SLT-Net classifier"),
    ]
    rows, thresholds = [], {}
    for name, maps, train_maps, predictions, notes in map_methods:
        t, train_acc = train_threshold(train, train_maps, size, interval)
        thresholds[name] = t
        row = score_row(name, "method", test, maps, size, threshold=t, predictions=predictions, interval=interval,
                        threshold_source="train split", output_dir=Path(maps).parent)
        at_fixed = float(np.interp(thr, row["curve"]["thresholds"], row["curve"]["gt_known"]))
        row["notes"] = (f"{notes}. Threshold {t:.3f} = best GT-known on the training split's boxes "
                        f"({train_acc:.1f}% there); at the papers' fixed {thr}: {at_fixed:.1f}% GT-known on test")
        rows.append(row)
    final = json.loads((runs / "sltnet" / "regressor" / "test" / "metrics.json").read_text())
    rows.append({"method": "SLT-Net (final)", "kind": "method", "top1_cls": final["top1_cls"],
                 "top1_loc": final["top1_loc"], "gt_known_loc": final["gt_known_loc"], "maxboxacc_v2": None,
                 "pxap": None, "threshold": None, "threshold_source": "", "curve": None,
                 "output_dir": str(runs / "sltnet" / "regressor" / "test"),
                 "notes": "box from the regressor, class from the classifier (Fig. 2c); a box, no map: "
                          "no MaxBoxAccV2 / PxAP"})
    ones = np.ones((size, size), np.float32)
    rows.append(score_row("Whole-image box", "baseline", test, lambda image_id: ones, size, threshold=None,
                          interval=interval,
                          notes="the whole image as the box (a constant map)"))
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
    stages.append({"name": "evaluation", "seconds": time.perf_counter() - t0})

    # the regressor's boxes as it predicted them (an inverted one too: it was scored as such)
    reg_boxes, _ = read_boxes_csv(runs / "sltnet" / "regressor" / "test" / "boxes.csv",
                                  written_by="sltnet/regressor/test.py", allow_inverted=True)
    grid_methods = {CAM_ROW: {"maps": cam_dir / "scoremaps", "threshold": thresholds[CAM_ROW]},
                    **({AGGRESSIVE_ROW: {"maps": agg_dir / "test" / "scoremaps", "threshold": thresholds[AGGRESSIVE_ROW]}}
                       if AGGRESSIVE_ROW in thresholds else {}),
                    "SPOL": {"maps": spol_seg / "scoremaps", "threshold": thresholds["SPOL"]},
                    "SLT-Net (map; regressor box)": {"maps": runs / "sltnet" / "localizer" / "test" / "scoremaps",
                                "threshold": thresholds["SLT-Net localizer map"],
                                "boxes": reg_boxes}}
    samples = grid_samples(test, size, grid_methods, s["grid_images"])
    logs = {label.replace(": ", " ").replace(" train", ""): str(Path(argv[argv.index("--output-dir") + 1]) / "log.jsonl")
            for label, _, stage, argv in plan if stage.endswith("_train")}
    wall = time.perf_counter() - start
    read_predictions(cam_pred)  # fails loudly if the read-out file is malformed
    results = {
        "title": "WSOL demo on generated birds" + (" (tiny smoke run)" if args.tiny else ""),
        "dataset": {"root": str(data_root), "train_images": len(train), "test_images": len(test),
                    "classes": num_classes(test), "input_size": size},
        "protocol": (f"WSOL (Choe et al.): whole image resized to {size}x{size}; box = largest contour of "
                     f"uint8 map > int(t * max); inclusive IoU >= 0.5; every test image counted; "
                     f"GT-known / Top-1 Loc of a map at the threshold that is best on the TRAINING split's "
                     f"boxes (Choe et al. choose it on held-out boxes; never on test)"),
        "settings": s, "device": args.device, "amp": args.amp, "pretrained": pretrained,
        "pretraining": pretrain_info,
        "rows": rows, "stages": stages, "wall_time_s": wall, "loss_logs": logs,
        "notes": ["GT-known-vs-threshold curves: GT-known Loc (IoU >= 0.5, largest contour) at every threshold; "
                  "a method's dot marks the threshold it uses. MaxBoxAccV2 = mean over IoU 30/50/70 of the "
                  "best accuracy over thresholds (all contours), PxAP = pixel average precision (Choe et al.)."],
    }
    paths = write_report(results, out, grid_samples=samples, grid_methods=list(grid_methods))
    print("\n" + markdown_table(rows), end="")
    print(f"demo: {wall:.0f} s; report {paths['report']}", flush=True)
    return results
