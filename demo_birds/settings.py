"""The demo's command line and settings: ``DEFAULTS`` < the config's ``demo:`` mapping (< the
``demo_full:`` mapping with ``--preset full``; < ``TINY`` and ``demo_tiny:`` with ``--tiny``) < the
command line. Light imports only: ``python3 demo.py --help`` parses before anything heavy is loaded."""
from __future__ import annotations

import argparse
from pathlib import Path

from utils.config import HelpFormatter, OptionParser, load_yaml_with_lines
from utils.errors import DataError
from utils.paths import CONFIG_DIR, OUTPUT_ROOT

DEFAULTS = dict(families=6, species=3, train_per_class=40, test_per_class=17, image_size=64, seed=0,
                seeds=None, clutter=0.5, distractors=0.6, body_evidence=1.0, object_scale=[0.5, 0.9],
                input_size=64, resize_size=72, box_threshold=0.2, grid_images=6, cam_curve_interval=0.001,
                # K of SMT and top-K ACAM as a share of the class count (the paper: 30 of 200 CUB classes)
                top_k_ratio=0.15,
                # the Table 5 ablation rows (+ SMT, + SMT + top-K ACAM, VST alone) besides the full localizer
                ablation=False,
                # the standalone regressor's teacher: the map of the final localizer on the training split
                # (sltnet/localizer/test.py --teacher-map) and its box threshold (a number, or best)
                teacher_map="acam", teacher_threshold="0.2",
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
# (every row: the aggressive CAM and the ablation rows too)
TINY = dict(families=2, species=2, train_per_class=2, test_per_class=2, image_size=64, input_size=64,
            resize_size=72, grid_images=2, cam_curve_interval=0.01, pretrain_steps=2, pretrain_batch_size=4,
            pretrain_val_images=4, top_k_ratio=0.5, aggressive_epochs=1, ablation=True)
PRESETS = ("quick", "full")


def teacher_map(text: str) -> str:
    """``type=`` of --teacher-map: a map ``sltnet/localizer/test.py --teacher-map`` knows."""
    from sltnet.options import TEACHER_MAPS

    if text not in TEACHER_MAPS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(TEACHER_MAPS)}, got {text!r}")
    return text


def teacher_threshold(text) -> str:
    """``type=`` of --teacher-threshold: a number in [0, 1] or ``best`` (passed on as text)."""
    from sltnet.options import threshold_or_best

    return str(threshold_or_best(str(text)))


def _setting_types() -> dict:
    """The valid range of each numeric setting (``utils.options``), as its option's ``type``."""
    from utils.ranges import (Range, fraction, non_negative_float, non_negative_int, positive_float,
                              positive_int, probability)

    return dict(families=positive_int, species=Range(int, 1, 10), seeds=non_negative_int,
                teacher_map=teacher_map, teacher_threshold=teacher_threshold,
                top_k_ratio=fraction, train_per_class=positive_int, test_per_class=positive_int,
                image_size=Range(int, 16), seed=non_negative_int, clutter=probability, distractors=non_negative_float,
                body_evidence=probability, object_scale=fraction, input_size=positive_int, resize_size=positive_int,
                box_threshold=probability, grid_images=non_negative_int, cam_curve_interval=fraction,
                pretrain_steps=positive_int, pretrain_batch_size=positive_int, pretrain_lr=positive_float,
                pretrain_seed=non_negative_int, pretrain_val_images=positive_int, aggressive_lr=positive_float,
                aggressive_epochs=non_negative_int)  # 0 epochs: the aggressive row is left out


def get_args_parser() -> argparse.ArgumentParser:
    p = OptionParser(prog="demo.py", formatter_class=HelpFormatter,
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
    p.add_argument("--preset", type=str, default="quick", choices=list(PRESETS),
                   help="quick: the config's demo: mapping (one seed, the default rows); full: its demo_full: "
                        "mapping on top (larger sets, the ablation rows, three seeds and their spread)")
    p.add_argument("--tiny", action="store_true", help="a few images and one step per stage (tests)")
    p.add_argument("--pretrain-dir", type=str, default=None,
                   help="where the stand-in pretraining's weights are read / written (default resource/)")
    p.add_argument("--keep", action="store_true",
                   help="keep earlier stage outputs (the stages then resume from their checkpoints)")
    types = _setting_types()
    for key, value in DEFAULTS.items():
        if isinstance(value, bool):
            p.add_argument("--" + key.replace("_", "-"), action=argparse.BooleanOptionalAction, default=None,
                           help=f"(default from the config's demo: mapping, else {value})")
            continue
        kind = types.get(key) or (type(value[0]) if isinstance(value, list) else type(value))
        p.add_argument("--" + key.replace("_", "-"), type=kind, default=None,
                       nargs="+" if key == "seeds" else len(value) if isinstance(value, list) else None,
                       help=f"(default from the config's demo: mapping, else {value})")
    return p


def resolve_settings(args) -> dict:
    """DEFAULTS < config 'demo:' (< 'demo_full:' with --preset full; < 'demo_tiny:' and TINY with
    --tiny) < command line; ``seeds`` is ``[seed]`` unless a list is given (``--seed`` alone on the
    command line wins over a config's list). A config value
    is converted and range-checked as the same option on the command line; an unknown key, a value
    out of range, invalid YAML or a key given twice is one ``DataError`` naming the file and line."""
    from utils.config import _checked

    settings = dict(DEFAULTS)
    config, lines = ({}, {})
    if args.config:
        config, lines = load_yaml_with_lines(Path(args.config))
    parser = get_args_parser()
    actions = {a.dest: a for a in parser._actions}
    sections = ["demo"] + (["demo_full"] if getattr(args, "preset", "quick") == "full" else []) \
        + (["demo_tiny"] if args.tiny else [])
    for section in sections:
        values = config.get(section) or {}
        if not isinstance(values, dict):
            raise DataError.at(args.config, lines.get((section,)), f"'{section}:' must be a mapping of settings")
        if section == "demo_tiny":
            settings.update(TINY)
        for key, value in values.items():
            line = lines.get((section, key))
            if key not in DEFAULTS:
                raise DataError.at(args.config, line, f"unknown key '{key}' in '{section}:' (the demo's settings: "
                                   f"{', '.join(DEFAULTS)})")
            settings[key] = _checked(parser, actions[key], value, Path(args.config), line, key)
            if isinstance(settings[key], tuple):
                settings[key] = list(settings[key])
    for key in DEFAULTS:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if settings["seeds"] is None or (args.seed is not None and args.seeds is None):
        settings["seeds"] = [settings["seed"]]  # one run, at --seed
    settings["seeds"] = [int(v) for v in settings["seeds"]]
    if len(set(settings["seeds"])) != len(settings["seeds"]):
        raise DataError(f"--seeds {' '.join(map(str, settings['seeds']))}: a seed is given twice")
    lo, hi = settings["object_scale"]
    if lo > hi:
        raise DataError(f"--object-scale {lo} {hi}: the first value must not be larger than the second")
    return settings
