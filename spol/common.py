"""What the SPOL stage scripts share: default paths, dataset reading, optimiser groups, hand-off checks.

Default folders (all derived from the repository root, never from the current directory)::

    data root   dataset/CUB_200_2011 (layout cub), dataset/ILSVRC2012 (layout ilsvrc)
    outputs     output/spol/<cub|imagenet>/<cls|cam|seg>
    hand-offs   <cls>/predictions.csv  (spol/cls/test.py)   -> spol/seg/test.py
                <cam>/model.pth        (spol/cam/train.py)  -> spol/cam/test.py
                <cam>/pseudo_masks/    (spol/cam/test.py)   -> spol/seg/train.py
                <seg>/model.pth        (spol/seg/train.py)  -> spol/seg/test.py
"""
from __future__ import annotations

import argparse
import math
import os

from utils.paths import CONFIG_DIR, DATASET_DIR, stage_dir

DATASET_OF_LAYOUT = {"cub": "cub", "ilsvrc": "imagenet"}
DEFAULT_DATA_ROOT = {"cub": DATASET_DIR / "CUB_200_2011", "imagenet": DATASET_DIR / "ILSVRC2012"}
# SPOL leaves this ImageNet val image out: its label is known to be wrong.
IMAGENET_EXCLUDE = ("ILSVRC2012_val_00033202.JPEG",)


def spol_config(name: str, section: str) -> dict:
    """One stage section of ``configs/spol_<name>.yaml`` (the reference values: SPOL's fixed box
    thresholds live there, not in the code), read when an option was left at None."""
    import yaml

    path = CONFIG_DIR / f"spol_{name}.yaml"
    try:
        with open(path, encoding="utf-8") as f:
            return dict((yaml.safe_load(f) or {}).get(section) or {})
    except OSError as exc:
        from utils.errors import DataError
        raise DataError.at(path, None, f"unreadable SPOL reference config ({exc.strerror})") from None


def add_spol_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options every SPOL stage has besides utils.config.add_common_args."""
    g = parser.add_argument_group("spol")
    g.add_argument("--dataset", type=str, default=None, choices=["cub", "imagenet"],
                   help="names the default folders (default: cub for layout cub, imagenet for ilsvrc; "
                        "required with layout metadata)")
    g.add_argument("--metadata-root", type=str, default=None,
                   help="layout metadata: folder of the split folders (default <data-root>/metadata)")
    g.add_argument("--exclude-ids", type=str, nargs="*", default=None,
                   help="image ids or file names left out (default on ImageNet: "
                        f"{' '.join(IMAGENET_EXCLUDE)})")
    return parser


def dataset_name(args) -> str:
    if args.dataset:
        return args.dataset
    if args.layout in DATASET_OF_LAYOUT:
        return DATASET_OF_LAYOUT[args.layout]
    raise ValueError(f"--layout {args.layout}: pass --dataset cub or --dataset imagenet")


def resolve_defaults(args, stage: str):
    """Fill ``output_dir``, ``data_root`` and ``exclude_ids`` left at None; returns ``args``."""
    name = dataset_name(args)
    if args.output_dir is None:
        args.output_dir = str(stage_dir("spol", name, stage))
    if args.data_root is None:
        args.data_root = str(DEFAULT_DATA_ROOT[name])
    if args.exclude_ids is None:
        args.exclude_ids = list(IMAGENET_EXCLUDE) if name == "imagenet" else []
    return args


def load_split(args, split: str, *, layout=None, data_root=None):
    """Records of one split (utils.layouts.load_records) with the stage's exclusions."""
    from utils.layouts import load_records

    return load_records(data_root or args.data_root, layout or args.layout, split,
                        metadata_root=args.metadata_root, exclude_ids=tuple(args.exclude_ids or ()))


def spol_param_groups(model, lr: float, backbone_lr_mult: float, weight_decay: float) -> list[dict]:
    """SGD groups of the reference: ``bkbone`` at ``lr * backbone_lr_mult``, the rest at ``lr``
    (frozen parameters are left out)."""
    backbone = model.backbone_parameters()
    head = [p for p in model.head_parameters() if p.requires_grad]
    return [{"params": backbone, "lr": lr * backbone_lr_mult, "weight_decay": weight_decay},
            {"params": head, "lr": lr, "weight_decay": weight_decay}]


def add_sgd_args(parser: argparse.ArgumentParser, *, lr: float, backbone_lr_mult: float):
    g = parser.add_argument_group("optimiser (SGD)")
    g.add_argument("--lr", type=float, default=lr, help="lr of the layers outside the backbone")
    g.add_argument("--backbone-lr-mult", type=float, default=backbone_lr_mult,
                   help="lr multiplier of the ResNet-50 backbone")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--weight-decay", type=float, default=1e-4)
    return parser


def drop_last_needed(num_images: int, batch_size: int, world_size: int) -> bool:
    """True when a rank's last batch would hold ONE image: the gating BatchNorms (``bn51`` ...)
    see one value per channel per image, and BatchNorm cannot train on a single value."""
    per_rank = math.ceil(num_images / world_size)
    return per_rank > batch_size and per_rank % batch_size == 1


def default_path(value, args, stage: str, *parts) -> str:
    """``value`` when given, else ``output/spol/<dataset>/<stage>/<parts...>``."""
    return os.fspath(value) if value else os.fspath(stage_dir("spol", dataset_name(args), stage).joinpath(*parts))
