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


# The localizer rows of the SLT-Net paper's Table 5, as switches of sltnet/localizer/train.py (the
# plain CAM rows are the same network with SMT, top-K ACAM and VST off). "map": the map a row's
# GT-known Loc boxes (its test step's --acam / --no-acam).
ABLATION_ROWS = [  # (row, runs/ folder, train switches, test map switch)
    ("+ SMT", "sltnet_smt", ["--smt", "--no-acam", "--no-vst"], "--no-acam"),
    ("+ SMT + top-K ACAM", "sltnet_smt_acam", ["--smt", "--acam", "--no-vst"], "--acam"),
    ("VST alone", "sltnet_vst", ["--no-smt", "--no-acam", "--vst"], "--no-acam"),
]
CAM_SWITCHES = ["--no-smt", "--no-acam", "--no-vst"]


def localizer_stages(label: str, folder: Path, train: list, test: list, geom: list, switches: list,
                     test_map: str, extra_train: tuple = ()) -> list:
    """A localizer trained with ``switches``, then its test step on the test split and on the
    training split (whose maps choose the row's box threshold)."""
    return [
        (f"{label}: localizer train", "sltnet.localizer.train", "localizer_train",
         train + geom + switches + list(extra_train) + ["--output-dir", folder]),
        (f"{label}: localizer test", "sltnet.localizer.test", "localizer_test",
         test + geom + [test_map, "--localizer-dir", folder, "--output-dir", folder / "test"]),
        (f"{label}: localizer test (train split)", "sltnet.localizer.test", "localizer_test",
         test + geom + [test_map, "--split", "train", "--localizer-dir", folder, "--output-dir", folder / "train"]),
    ]


def stage_plan(cfg: str, data_root: str, runs: Path, s: dict, device: str, amp: str, tiny: bool,
               pretrained: str = "none") -> list:
    """[(row label, module, stage name, argv)] in order. Geometry is passed here, so that every
    stage evaluates at the same input size; ``pretrained`` goes to every training stage; K of SMT and
    top-K ACAM is ``top_k_ratio`` of the class count (``--top-k-ratio``)."""
    common = ["--config", cfg, "--data-root", data_root, "--layout", "cub", "--device", device, "--amp", amp]
    train = common + (TINY_TRAIN_ARGS if tiny else []) + ["--pretrained", pretrained]
    test = common + (TINY_TEST_ARGS if tiny else [])
    S, R = s["input_size"], s["resize_size"]
    net = ["--backbone", s["backbone"]]   # every stage
    geom = ["--input-size", S, "--resize-size", R] + net
    slt_geom = geom + ["--top-k-ratio", s["top_k_ratio"]]     # the localizer's stages
    spol, slt = runs / "spol", runs / "sltnet"
    plan = localizer_stages("CAM", runs / "cam" / "localizer", train, test, slt_geom, CAM_SWITCHES, "--no-acam")
    if s["aggressive_epochs"] > 0:  # plain CAM, every layer at a high lr for many epochs
        agg = ["--lr", s["aggressive_lr"], "--head-lr-mult", 1.0] + ([] if tiny else ["--epochs", s["aggressive_epochs"]])
        plan += localizer_stages("CAM aggressive", runs / "cam_aggressive" / "localizer", train, test, slt_geom,
                                 CAM_SWITCHES, "--no-acam", agg)
    if s["ablation"]:
        for label, folder, switches, test_map in ABLATION_ROWS:
            plan += localizer_stages(f"SLT-Net {label}", runs / folder / "localizer", train, test, slt_geom,
                                     switches, test_map)
    plan += [
        ("SPOL: cls train", "spol.cls.train", "cls_train", train + net + ["--resize-size", R, "--input-size", S, "--output-dir", spol / "cls"]),
        ("SPOL: cls test", "spol.cls.test", "cls_test", test + net + ["--resize-size", S, "--output-dir", spol / "cls"]),
        ("SPOL: cam train", "spol.cam.train", "cam_train", train + net + ["--resize-size", R, "--input-size", S, "--output-dir", spol / "cam"]),
        ("SPOL: cam test", "spol.cam.test", "cam_test", test + net + ["--resize-size", R, "--output-dir", spol / "cam"]),
        ("SPOL: seg train", "spol.seg.train", "seg_train",
         train + net + ["--resize-size", R, "--input-size", S, "--mask-dir", spol / "cam" / "pseudo_masks", "--output-dir", spol / "seg"]),
        ("SPOL: seg test", "spol.seg.test", "seg_test",
         test + net + ["--protocol", "wsol", "--input-size", S, "--cls-dir", spol / "cls", "--output-dir", spol / "seg",
                 "--threshold-split", "train"]),
    ]
    localizer = slt / "localizer"
    plan += localizer_stages("SLT-Net", localizer, train, test, slt_geom, ["--smt", "--acam", "--vst"], "--acam")
    # Table 6's path: the regressor alone, on the boxes of the final localizer's training-split maps
    # (its teacher: the map and threshold of the config's localizer_teacher section)
    plan += [
        ("SLT-Net: teacher boxes (train split)", "sltnet.localizer.test", "localizer_test",
         test + slt_geom + ["--split", "train", "--localizer-dir", localizer, "--output-dir", localizer / "teacher",
                            "--teacher-map", s["teacher_map"], "--box-threshold", s["teacher_threshold"],
                            "--no-scoremaps", "--no-maxboxacc"]),
        ("SLT-Net: regressor train", "sltnet.regressor.train", "regressor_train",
         train + geom + ["--boxes", localizer / "teacher" / "boxes.csv", "--output-dir", slt / "regressor"]),
        ("SLT-Net: classifier train", "sltnet.classifier.train", "classifier_train",
         train + geom + ["--output-dir", slt / "classifier"]),
        ("SLT-Net: classifier test", "sltnet.classifier.test", "classifier_test",
         test + geom + ["--classifier-dir", slt / "classifier", "--output-dir", slt / "classifier" / "test"]),
        ("SLT-Net: regressor test", "sltnet.regressor.test", "regressor_test",
         test + geom + ["--regressor-source", "regressor", "--regressor-dir", slt / "regressor",
                            "--localizer-dir", localizer, "--classifier-dir", slt / "classifier",
                            "--output-dir", slt / "regressor" / "test"]),
    ]
    return plan
