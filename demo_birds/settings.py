"""The demo's command line and settings: ``DEFAULTS`` < the config's ``demo:`` mapping (< ``TINY``
and ``demo_tiny:`` with ``--tiny``) < the command line. Light imports only: ``python3 demo.py --help``
parses before anything heavy is loaded."""
from __future__ import annotations

import argparse

import yaml

from utils.config import HelpFormatter
from utils.paths import CONFIG_DIR, OUTPUT_ROOT

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
