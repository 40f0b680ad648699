"""End-to-end demo on generated "birds": plain CAM, SPOL and SLT-Net, each through its own stage scripts,
each fine-tuning a pretrained backbone with its paper's recipe (scaled), as the papers do.

    python3 demo.py                                   # CPU, 2 cores: the one-time stand-in pretraining, then the demo
    python3 demo.py --pretrained none                 # every stage from random weights (the old demo)
    python3 demo.py --pretrained PATH                 # your own torchvision-layout state dict of --backbone
    python3 demo.py --device cuda --config configs/demo_gpu.yaml   # one GPU, 224 px preset
    torchrun --nproc_per_node 2 demo.py --device cuda # several GPUs (the stages run under DDP)
    python3 demo.py --data-root dataset/CUB_200_2011  # an existing CUB-200-2011-layout dataset, as is
    python3 demo.py --tiny                            # smoke run (a few images, one step per stage)

What it does, in order (settings in configs/demo.yaml; command-line options of this script win):

0. The backbone (``--backbone``; configs/demo.yaml: ResNet-18): ``--pretrained standin`` (default) is
   ``network.pretrain``'s network trained on generated generic objects (a stand-in for ImageNet;
   none of them is a bird); the ResNet-18 file of configs/demo.yaml ships in ``resource/``, any other
   is made once into ``resource/`` (``--pretrain-dir``) when missing and reused afterwards; its held-out
   accuracy goes into the report. ``imagenet`` / ``none`` / a path are passed to the stages as they are.
1. Generates a fine-grained "birds" dataset in the CUB-200-2011 layout (``utils.generate``; the class
   is decided by the head) into ``dataset/demo_birds`` unless ``--data-root`` is given; a folder
   already generated with the same settings is reused.
2. Runs the stage scripts in-process (``main(parse_args(get_args_parser(), argv, stage=...))``, the
   same code as ``python3 <stage>/train.py``; their own tqdm bars and log.jsonl):
   plain CAM = the SLT-Net localizer with SMT, top-K ACAM and VST switched off (train, test), once
   with SLT-Net's low-lr recipe ("CAM, paper's recipe": its Table 5 "new optimization" row) and once
   fine-tuned aggressively (``aggressive_lr`` / ``aggressive_epochs``: part domination);
   SPOL cls -> cam -> seg (train and test of each); SLT-Net localizer(+regressor) -> classifier ->
   final regressor test. Outputs: ``output/demo/runs/<method>/<stage>``.
3. Scores every row with the same evaluator (``utils.evaluate.evaluate_scoremaps``, WSOL protocol: the
   whole image resized to the input size, Choe et al.'s box rule, inclusive IoU >= 0.5) on the test
   split, plus two trivial baselines (whole-image box; a centred box whose side fraction is chosen on
   the TRAINING split's boxes) and the upper bound of boxes from the true masks. GT-known / Top-1 Loc
   of a map are taken at the threshold that is best on the TRAINING split's boxes (Choe et al. choose
   it on a held-out fully supervised split; the CUB layout has none, and nothing is ever tuned on the
   test split); the accuracy at the papers' fixed 0.2 is given in the notes and the curve picture.
   MaxBoxAccV2 and PxAP need no threshold. The maps of the training images come from the stages'
   own test steps run on ``--split train`` (SPOL: seg test's ``--threshold-split train``).
4. Writes ``output/demo/results.json`` and ``output/demo/report.md`` with pictures (``utils.report``).

The plain CAM row's classes come from the CAM network's own logits: the localizer test step writes
no predictions, so this script reads them out (:func:`cam_predictions`) with the stage's model code.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from utils.config import HelpFormatter, parse_args
from utils.layouts import load_records, num_classes
from utils.protocol import get_protocol
from utils.evaluate import evaluate_scoremaps
from utils.paths import CONFIG_DIR, DATASET_DIR, OUTPUT_ROOT

DEFAULTS = dict(classes=8, train_per_class=60, test_per_class=25, image_size=64, seed=0, clutter=0.6,
                distractors=0.8, body_evidence=0.8, object_scale=[0.4, 0.9], input_size=64, resize_size=72,
                box_threshold=0.2, grid_images=6, cam_curve_interval=0.001,
                # the ResNet every stage fine-tunes (and the stand-in pretraining trains): passed to
                # every stage as --backbone
                backbone="resnet50",
                # backbone initialisation of every training stage: "standin" = network.pretrain's file
                # (trained once when missing), or "imagenet" | "none" | PATH (passed to --pretrained)
                pretrained="standin", pretrain_steps=300, pretrain_batch_size=64, pretrain_lr=0.05,
                pretrain_seed=0, pretrain_val_images=540, pretrain_half=False,
                # the "CAM, aggressive fine-tuning" row: lr and epochs (0 epochs: row left out)
                aggressive_lr=0.02, aggressive_epochs=10)
# a smoke run: a few images, one optimiser step per training stage (and a 2-step pretraining)
TINY = dict(classes=5, train_per_class=2, test_per_class=2, image_size=64, input_size=64, resize_size=72,
            grid_images=2, cam_curve_interval=0.01, pretrain_steps=2, pretrain_batch_size=4,
            pretrain_val_images=4)
CAM_ROW = "CAM, paper's recipe"
AGGRESSIVE_ROW = "CAM, aggressive fine-tuning"
TINY_TRAIN_ARGS = ["--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "4"]
TINY_TEST_ARGS = ["--batch-size", "4"]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="demo.py", formatter_class=HelpFormatter,
                                description="WSOL demo on generated data: CAM, SPOL, SLT-Net through their stage scripts")
    p.add_argument("--config", type=str, default=str(CONFIG_DIR / "demo.yaml"),
                   help="stage settings (per-stage mappings) and this script's own ('demo:' mapping)")
    p.add_argument("--data-root", type=str, default=None,
                   help="an existing CUB-200-2011-layout dataset to use as is (default: generate one)")
    p.add_argument("--data-out", type=str, default=None,
                   help="where to generate the dataset (default dataset/demo_birds, --tiny: dataset/demo_birds_tiny)")
    p.add_argument("--output-dir", type=str, default=str(OUTPUT_ROOT / "demo"))
    p.add_argument("--device", type=str, default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--amp", type=str, default="off", choices=["off", "bf16", "fp16"])
    p.add_argument("--tiny", action="store_true", help="a few images and one step per stage (tests)")
    p.add_argument("--pretrain-dir", type=str, default=None,
                   help="where the stand-in pretraining's weights are read / written (default resource/)")
    p.add_argument("--keep", action="store_true",
                   help="keep earlier stage outputs (the stages then resume from their checkpoints)")
    for key, value in DEFAULTS.items():
        if isinstance(value, bool):
            p.add_argument("--" + key.replace("_", "-"), action=argparse.BooleanOptionalAction, default=None,
                           help=f"(default from the config's demo: mapping, else {value})")
            continue
        kind = type(value[0]) if isinstance(value, list) else type(value)
        p.add_argument("--" + key.replace("_", "-"), type=kind, default=None,
                       nargs=len(value) if isinstance(value, list) else None,
                       help=f"(default from the config's demo: mapping, else {value})")
    return p


def resolve_settings(args) -> dict:
    """DEFAULTS < config 'demo:' (< 'demo_tiny:' and TINY with --tiny) < command line."""
    settings = dict(DEFAULTS)
    config = {}
    if args.config:
        with open(args.config, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
    settings.update(config.get("demo") or {})
    if args.tiny:
        settings.update(TINY)
        settings.update(config.get("demo_tiny") or {})
    for key in DEFAULTS:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"{args.config}: unknown key(s) in demo: {sorted(unknown)}")
    return settings


# ----------------------------------------------------------------------------- stages
def run_stage(module_name: str, stage: str, argv: list[str]) -> float:
    """Import a stage script and run ``main(parse_args(get_args_parser(), argv, stage=stage))``."""
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


@torch.no_grad()
def cam_predictions(cfg: str, argv: list, records, out_path: Path) -> Path:
    """predictions.csv of the plain CAM network (its own GAP logits), with the localizer test's
    options (``argv``) and model code (``sltnet.model.build_branch`` + ``load_stage_weights``)."""
    from sltnet.model import build_branch
    from sltnet.options import PRODUCER, resolve_args
    from utils.checkpoint import load_stage_weights
    from sltnet.localizer import test as localizer_test
    from utils.data import WSOLDataset
    from utils.transforms import build_transform
    from utils.predictions import write_predictions

    args = resolve_args(parse_args(localizer_test.get_args_parser(), [str(a) for a in argv],
                                   stage="localizer_test"), "localizer", test_of="localizer")
    branch = build_branch(args, num_classes(records), pretrained="none")
    load_stage_weights(branch, Path(args.localizer_dir) / "model.pth", PRODUCER["localizer"])
    model = branch.localizer.eval()
    dataset = WSOLDataset(records, build_transform("resize", resize=args.input_size))
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=False)
    k = min(5, num_classes(records))
    top = [model(batch["image"])["logits"].topk(k, dim=1).indices for batch in loader]
    write_predictions(out_path, [r.image_id for r in records], [r.label for r in records], torch.cat(top))
    return out_path


# ----------------------------------------------------------------------------- evaluation
def centre_box_map(size: int, fraction: float) -> np.ndarray:
    """A map that is 1 inside the centred square box of side ``fraction * size``, 0 outside."""
    margin = int(round(size * (1 - fraction) / 2))
    m = np.zeros((size, size), np.float32)
    m[margin:size - margin, margin:size - margin] = 1
    return m


def choose_centre_fraction(train_records, size: int) -> tuple[float, float]:
    """The side fraction (0.30 .. 1.00, step 0.05) of the centred box with the best GT-known Loc
    on the TRAINING split's boxes (never the test split); returns (fraction, train accuracy)."""
    from utils.cam import boxes_from_maps
    from utils.metrics import LocalizationMeter

    gts = [get_protocol("resize", size).gt_boxes(r.boxes, r.size) for r in train_records]
    best = (1.0, -1.0)
    for fraction in np.round(np.arange(0.30, 1.0001, 0.05), 2):
        box = boxes_from_maps(centre_box_map(size, float(fraction)), 0.5)[0]
        meter = LocalizationMeter()
        meter.update(np.repeat(box, len(gts), axis=0), gts)
        acc = meter.compute()["gt_known_loc"]
        if acc > best[1]:
            best = (float(fraction), acc)
    return best


def train_threshold(train_records, maps, size: int, interval: float) -> tuple[float, float]:
    """Choe et al.'s threshold choice on held-out boxes, here the TRAINING split's boxes (the
    generated layout has no val split; never the test split): the best threshold of the IoU-50
    sweep of the method's maps of the training images. Returns (threshold, GT-known there)."""
    res = evaluate_scoremaps(train_records, maps, "wsol", input_size=size, cam_curve_interval=interval,
                             split="train")
    return float(res["best_threshold"]), float(res["gt_known_loc"])


def score_row(name: str, kind: str, records, maps, size: int, *, threshold: float | None, predictions=None,
              top1_cls=None, notes: str = "", output_dir=None, threshold_source: str = "",
              interval: float = 0.001) -> dict:
    """One table row from score maps through utils.evaluate (WSOL protocol at ``size``)."""
    res = evaluate_scoremaps(records, maps, "wsol", threshold=0.5 if threshold is None else threshold,
                             predictions=predictions, input_size=size, cam_curve_interval=interval, split="test")
    if predictions is not None and top1_cls is None:
        from utils.predictions import read_predictions

        preds = read_predictions(predictions) if isinstance(predictions, (str, os.PathLike)) else predictions
        top1_cls = 100.0 * float(np.mean([preds[r.image_id].top1_correct for r in records]))
    return {"method": name, "kind": kind, "top1_cls": top1_cls, "top1_loc": res.get("top1_loc"),
            "gt_known_loc": res["gt_known_loc"], "maxboxacc_v2": res["maxboxacc_v2"], "pxap": res.get("pxap"),
            "threshold": threshold, "threshold_source": threshold_source if threshold is not None else "",
            "notes": notes, "output_dir": None if output_dir is None else str(output_dir),
            "curve": {"thresholds": res["curves"]["thresholds"], "gt_known": res["curves"]["maxboxacc_iou50"]}}


def _image_at(record, size: int) -> np.ndarray:
    import cv2

    image = cv2.imread(record.path, cv2.IMREAD_COLOR)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)[:, :, ::-1].copy()


def grid_samples(records, size: int, methods: dict, n: int) -> list[dict]:
    """``n`` test images spread evenly over the split (so over the classes), with each method's map
    and box (see utils.report.draw_grid)."""
    from utils.cam import boxes_from_maps
    from utils.evaluate import load_scoremap

    samples = []
    picks = np.unique(np.linspace(0, len(records) - 1, num=min(n, len(records))).round().astype(int))
    for r in (records[int(i)] for i in picks):
        geometry = get_protocol("resize", size)
        sample = {"image": _image_at(r, size), "gt_boxes": geometry.gt_boxes(r.boxes, r.size),
                  "mask": geometry.gt_mask(r), "maps": {}, "boxes": {}}
        for name, spec in methods.items():
            if spec.get("maps") is not None:
                scoremap = load_scoremap(spec["maps"], r.image_id, size)
                sample["maps"][name] = scoremap
                sample["boxes"][name] = boxes_from_maps(scoremap, spec["threshold"])[0][0]
            if spec.get("boxes") is not None:
                sample["boxes"][name] = spec["boxes"][r.image_id]
        samples.append(sample)
    return samples


def prepare_data(args, s: dict, is_main: bool) -> Path:
    """The dataset to use: --data-root as is, or a generated one (reused when its settings match)."""
    from utils.generate import generate_dataset, read_generator_params

    if args.data_root:
        return Path(args.data_root)
    out = Path(args.data_out or DATASET_DIR / ("demo_birds_tiny" if args.tiny else "demo_birds"))
    kwargs = dict(num_classes=s["classes"], train_per_class=s["train_per_class"], test_per_class=s["test_per_class"],
                  image_size=s["image_size"], seed=s["seed"], clutter=s["clutter"], distractors=s["distractors"],
                  body_evidence=s["body_evidence"], object_scale=tuple(s["object_scale"]))
    if is_main:
        old = read_generator_params(out)
        if old is None and out.exists() and any(out.iterdir()):
            # not a folder utils.generate wrote (no generator.json): never replace a user's files
            from utils.errors import DataError
            raise DataError.at(out, None, "exists and was not generated by utils.generate (no generator.json): "
                               "choose another --data-out (or pass it as --data-root to use it as it is)")
        wanted = {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}
        if old is None or any(old.get(k) != v for k, v in wanted.items()):
            generate_dataset(out, overwrite=True, progress=True, **kwargs)
        else:
            print(f"demo: reusing {out} (generated with the same settings)", flush=True)
    else:  # other torchrun ranks wait for rank 0's dataset
        while read_generator_params(out) is None:
            time.sleep(1)
    return out


def pretrain_settings(s: dict) -> dict:
    """network.pretrain's settings for the demo: its defaults, the demo's image size and pretrain_* keys."""
    from network.pretrain import DEFAULTS as PRETRAIN_DEFAULTS

    return {**PRETRAIN_DEFAULTS, "arch": s["backbone"], "size": s["input_size"], "steps": s["pretrain_steps"],
            "batch_size": s["pretrain_batch_size"], "lr": s["pretrain_lr"], "seed": s["pretrain_seed"],
            "val_images": s["pretrain_val_images"], "half": bool(s["pretrain_half"])}


def prepare_pretrained(args, s: dict, is_main: bool) -> tuple[str, dict | None]:
    """The ``--pretrained`` value of the training stages and what is known of it.

    ``standin``: the stand-in pretraining's weight file (``network.pretrain``), trained now when it
    is missing (once; later runs reuse it), its JSON (held-out accuracy, seconds, SHA-256) returned.
    ``imagenet`` / ``none`` / a path: passed on as they are."""
    from utils.paths import RESOURCE_DIR
    from network.pretrain import pretrain, read_info, weight_path

    if s["pretrained"] != "standin":
        return str(s["pretrained"]), None
    settings = pretrain_settings(s)
    resource_dir = Path(args.pretrain_dir) if args.pretrain_dir else RESOURCE_DIR
    path = weight_path(settings, resource_dir)
    if is_main:
        if path.is_file() and read_info(path) is not None:
            print(f"demo: reusing the stand-in pretraining {path}", flush=True)
        else:
            device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
            pretrain(settings, resource_dir=resource_dir, device=device, progress=True)
    else:  # other torchrun ranks wait for rank 0's file
        while read_info(path) is None:
            time.sleep(1)
    return str(path), read_info(path)


def main(args) -> dict | None:
    from utils.predictions import read_boxes_csv
    from utils.io import atomic_write_json
    from utils.predictions import read_predictions
    from utils.report import markdown_table, write_report

    start = time.perf_counter()
    s = resolve_settings(args)
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
    cam_pred = cam_predictions(args.config, plan[1][3], test, runs / "cam" / "predictions.csv")
    agg_dir = runs / "cam_aggressive" / "localizer"
    agg_plan = [argv for label, _, _, argv in plan if label == "CAM aggressive: localizer test"]
    agg_pred = (cam_predictions(args.config, agg_plan[0], test, runs / "cam_aggressive" / "predictions.csv")
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
    rows.append(score_row("True mask (upper bound)", "upper_bound", test, masks, size, threshold=None,
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


if __name__ == "__main__":
    from utils.config import report_error
    from utils.errors import DataError

    try:
        main(get_args_parser().parse_args())
    except DataError as exc:  # bad input, a stage's fault: one line, exit 2
        from utils.rundir import restore_protected
        restore_protected()  # a failed test step's previous outputs go back
        report_error(exc)
        raise SystemExit(2) from None
