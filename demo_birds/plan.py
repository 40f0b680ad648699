"""The demo's stage plan: every stage script, in order, with the arguments the demo passes it, and
running one in-process through its ``main``, as ``python3 <stage>/train.py`` does (its frame,
``utils.engine.stage.start_run``: a test step reads its training run's model options and keeps its
previous outputs until it ends)."""
from __future__ import annotations

import importlib
import time
from pathlib import Path

from utils.config import parse_args

# a smoke run (--tiny): one optimiser step per training stage
TINY_TRAIN_ARGS = ["--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "4"]
TINY_TEST_ARGS = ["--batch-size", "4"]


def run_stage(module_name: str, stage: str, argv: list[str]) -> float:
    """Import a stage script, parse ``argv`` as its command line (``stage``: its config section) and
    call its ``main``; returns the seconds ``main`` took. A stage's fault propagates (``DataError``:
    ``demo.py`` ends with its one line), its previous outputs already put back by ``main``."""
    module = importlib.import_module(module_name)
    args = parse_args(module.get_args_parser(), [str(a) for a in argv], stage=stage)
    start = time.perf_counter()
    module.main(args)
    return time.perf_counter() - start


def stage_plan(cfg: str, data_root: str, runs: Path, s: dict, device: str, amp: str, tiny: bool,
               pretrained: str = "none") -> list:
    """[(row label, module, stage name, argv)] in order. Geometry is passed here, so that every
    stage evaluates at the same input size; ``pretrained`` goes to every training stage."""
    common = ["--config", cfg, "--data-root", data_root, "--layout", "cub", "--device", device, "--amp", amp]
    train = common + (TINY_TRAIN_ARGS if tiny else []) + ["--pretrained", pretrained]
    test = common + (TINY_TEST_ARGS if tiny else [])
    S, R = s["input_size"], s["resize_size"]
    net = ["--backbone", s["backbone"]]   # every stage
    slt_geom = ["--input-size", S, "--resize-size", R] + net
    cam, spol, slt = runs / "cam", runs / "spol", runs / "sltnet"
    cam_switches = ["--no-smt", "--no-acam", "--no-vst"]
    aggressive = []
    if s["aggressive_epochs"] > 0:  # plain CAM, every layer at a high lr for many epochs
        agg = runs / "cam_aggressive" / "localizer"
        agg_args = ["--lr", s["aggressive_lr"], "--head-lr-mult", 1.0] + ([] if tiny else ["--epochs", s["aggressive_epochs"]])
        aggressive = [
            ("CAM aggressive: localizer train", "sltnet.localizer.train", "localizer_train",
             train + slt_geom + cam_switches + agg_args + ["--output-dir", agg]),
            ("CAM aggressive: localizer test", "sltnet.localizer.test", "localizer_test",
             test + slt_geom + ["--no-acam", "--localizer-dir", agg, "--output-dir", agg / "test",
                                "--box-threshold", s["box_threshold"]]),
            ("CAM aggressive: localizer test (train split)", "sltnet.localizer.test", "localizer_test",
             test + slt_geom + ["--no-acam", "--split", "train", "--localizer-dir", agg, "--output-dir", agg / "train",
                                "--box-threshold", s["box_threshold"]]),
        ]
    return [
        ("CAM: localizer train", "sltnet.localizer.train", "localizer_train",
         train + slt_geom + cam_switches + ["--output-dir", cam / "localizer"]),
        ("CAM: localizer test", "sltnet.localizer.test", "localizer_test",
         test + slt_geom + ["--no-acam", "--localizer-dir", cam / "localizer", "--output-dir", cam / "localizer" / "test",
                            "--box-threshold", s["box_threshold"]]),
        ("CAM: localizer test (train split)", "sltnet.localizer.test", "localizer_test",
         test + slt_geom + ["--no-acam", "--split", "train", "--localizer-dir", cam / "localizer",
                            "--output-dir", cam / "localizer" / "train", "--box-threshold", s["box_threshold"]]),
        *aggressive,
        ("SPOL: cls train", "spol.cls.train", "cls_train", train + net + ["--resize-size", R, "--input-size", S, "--output-dir", spol / "cls"]),
        ("SPOL: cls test", "spol.cls.test", "cls_test", test + net + ["--resize-size", S, "--output-dir", spol / "cls"]),
        ("SPOL: cam train", "spol.cam.train", "cam_train", train + net + ["--resize-size", R, "--input-size", S, "--output-dir", spol / "cam"]),
        ("SPOL: cam test", "spol.cam.test", "cam_test", test + net + ["--resize-size", R, "--output-dir", spol / "cam"]),
        ("SPOL: seg train", "spol.seg.train", "seg_train",
         train + net + ["--resize-size", R, "--input-size", S, "--mask-dir", spol / "cam" / "pseudo_masks", "--output-dir", spol / "seg"]),
        ("SPOL: seg test", "spol.seg.test", "seg_test",
         test + net + ["--protocol", "wsol", "--input-size", S, "--cls-dir", spol / "cls", "--output-dir", spol / "seg",
                 "--threshold-split", "train"]),
        ("SLT-Net: localizer train", "sltnet.localizer.train", "localizer_train",
         train + slt_geom + ["--output-dir", slt / "localizer"]),
        ("SLT-Net: localizer test", "sltnet.localizer.test", "localizer_test",
         test + slt_geom + ["--localizer-dir", slt / "localizer", "--output-dir", slt / "localizer" / "test",
                            "--box-threshold", s["box_threshold"]]),
        ("SLT-Net: localizer test (train split)", "sltnet.localizer.test", "localizer_test",
         test + slt_geom + ["--split", "train", "--localizer-dir", slt / "localizer",
                            "--output-dir", slt / "localizer" / "train", "--box-threshold", s["box_threshold"]]),
        ("SLT-Net: classifier train", "sltnet.classifier.train", "classifier_train",
         train + slt_geom + ["--output-dir", slt / "classifier"]),
        ("SLT-Net: classifier test", "sltnet.classifier.test", "classifier_test",
         test + slt_geom + ["--classifier-dir", slt / "classifier", "--output-dir", slt / "classifier" / "test"]),
        ("SLT-Net: regressor test", "sltnet.regressor.test", "regressor_test",
         test + slt_geom + ["--localizer-dir", slt / "localizer", "--classifier-dir", slt / "classifier",
                            "--output-dir", slt / "regressor" / "test"]),
    ]
