"""The command lines of the SPOL stage scripts, importable without torch (a script parses before its
heavy imports: ``utils.config.parse_early``); beside each test step's parser, what it takes from its
training run and the outputs it replaces (``CAM_TEST_INHERITS``, ``CAM_TEST_OUTPUTS``, ...); the
defaults other options decide (:func:`resolve_defaults`, :func:`default_path`, :func:`spol_config`)
and the split they name (:func:`load_split`)."""
from __future__ import annotations

import argparse
import os

from utils.config import add_common_args, stage_parser
from utils.options import Inherit, add_classifier_args, add_output_stride_arg
from utils.ranges import (fraction, momentum, non_negative_float, non_negative_int, open_fraction,
                          positive_float, positive_int, probability)
from utils.paths import CONFIG_DIR, DATASET_DIR, METRICS, stage_dir
from utils.evaluation.protocol import BOTH, choices as protocol_choices, expand

DATASET_OF_LAYOUT = {"cub": "cub", "ilsvrc": "imagenet"}
DEFAULT_DATA_ROOT = {"cub": DATASET_DIR / "CUB_200_2011", "imagenet": DATASET_DIR / "ILSVRC2012"}
# SPOL leaves this ImageNet val image out: its label is known to be wrong.
IMAGENET_EXCLUDE = ("ILSVRC2012_val_00033202.JPEG",)

# spol.pseudo_mask.WORK_SIZE (that module loads torch and cv2; tests/unit/test_cli.py checks the two agree)
PSEUDO_MASK_WORK_SIZE = 256


def _add_backbone_arg(parser: argparse.ArgumentParser, *, test: bool = False) -> None:
    """``--backbone`` of the CAM and seg models: the paper's ResNet-50, or ResNet-18 (the demo's);
    ``--output-stride`` of that trunk (32, the paper's, by default)."""
    parser.add_argument("--backbone", type=str, default="resnet50", choices=["resnet50", "resnet18"],
                        help="ResNet trunk of the shallow x deep model (test steps: the training run's by default)")
    add_output_stride_arg(parser, test=test)


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


def add_sgd_args(parser: argparse.ArgumentParser, *, lr: float, backbone_lr_mult: float):
    g = parser.add_argument_group("optimiser (SGD)")
    g.add_argument("--lr", type=positive_float, default=lr, help="lr of the layers outside the backbone")
    g.add_argument("--backbone-lr-mult", type=non_negative_float, default=backbone_lr_mult,
                   help="lr multiplier of the ResNet backbone")
    g.add_argument("--momentum", type=momentum, default=0.9)
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--weight-decay", type=non_negative_float, default=1e-4)
    return parser


def add_geometry_args(group, *, resize_help: str, crop_help: str, resize: int = 256, crop: int = 224):
    """``--resize-size`` / ``--input-size``."""
    group.add_argument("--resize-size", type=positive_int, default=resize, help=resize_help)
    group.add_argument("--input-size", type=positive_int, default=crop, help=crop_help)


def cls_train_parser() -> argparse.ArgumentParser:
    """``spol/cls/train.py``."""
    parser = stage_parser("spol/cls/train.py", "SPOL cls stage: train the classifier")
    add_common_args(parser)
    add_spol_args(parser)
    add_classifier_args(parser, train=True)
    parser.set_defaults(batch_size=16, epochs=20, resize_size=685, input_size=600)
    return parser


def cls_test_parser() -> argparse.ArgumentParser:
    """``spol/cls/test.py``."""
    parser = stage_parser("spol/cls/test.py", "SPOL cls stage: write predictions.csv")
    add_common_args(parser, train=False)
    add_spol_args(parser)
    add_classifier_args(parser, train=False)
    parser.set_defaults(batch_size=16, resize_size=685, pretrained="none")
    return parser


# A test step reads its training run in its own folder (unless --checkpoint names other weights): the
# network, and the input geometry when not given (cls: the resize only, it tests the whole image).
CLS_TEST_INHERITS = Inherit(folder="output_dir", options=("backbone",), soft=("resize_size",), unless="checkpoint")
CLS_TEST_OUTPUTS = ("predictions.csv", *METRICS)


def cam_train_parser() -> argparse.ArgumentParser:
    """``spol/cam/train.py``."""
    parser = stage_parser("spol/cam/train.py", "SPOL cam stage: train the CAM model")
    add_common_args(parser)
    add_spol_args(parser)
    _add_backbone_arg(parser)
    add_sgd_args(parser, lr=0.02, backbone_lr_mult=0.1)
    g = parser.add_argument_group("cam")
    g.add_argument("--loss", type=str, default="two_head", choices=["two_head", "single_head"],
                   help="two_head: CUB's (CE(deep) + softCE(fused, softmax(deep))) / 2; "
                        "single_head: ImageNet's CE(fused)")
    g.add_argument("--freeze-stem", action=argparse.BooleanOptionalAction, default=False,
                   help="freeze conv1/bn1 of the backbone (the reference's ImageNet setting)")
    g.add_argument("--split", type=str, default="train")
    add_geometry_args(g, resize_help="resize to N x N", crop_help="random crop")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True)
    parser.set_defaults(batch_size=64, epochs=32)
    return parser


def cam_test_parser() -> argparse.ArgumentParser:
    """``spol/cam/test.py``."""
    parser = stage_parser("spol/cam/test.py", "SPOL cam stage: write pseudo masks of the training images")
    add_common_args(parser, train=False)
    add_spol_args(parser)
    _add_backbone_arg(parser, test=True)
    g = parser.add_argument_group("cam test")
    g.add_argument("--checkpoint", type=str, default=None,
                   help="CAM model weights (default <output-dir>/model.pth, written by spol/cam/train.py)")
    g.add_argument("--split", type=str, default="train", help="images to write pseudo masks for")
    g.add_argument("--resize-size", type=positive_int, default=PSEUDO_MASK_WORK_SIZE,
                   help="images are resized to N x N: the CAM input and pseudo-mask working size (reference: 256)")
    g.add_argument("--mask-workers", type=non_negative_int, default=4, help="CPU threads fitting the Gaussians")
    g.add_argument("--mask-format", type=str, default="png", choices=["png", "authors"],
                   help="png: lossless <id stem>.png for every dataset; authors: the SPOL authors' file "
                        "names (ImageNet: lossy JPEG under the image's own name)")
    # spol.pseudo_mask.BAND_LOW/BAND_HIGH/MIN_CONTOUR_AREA (that module loads torch; tests/unit/test_cli.py checks them)
    g.add_argument("--band", type=probability, nargs=2, default=[0.1, 0.5], metavar=("LOW", "HIGH"),
                   help="Gaussian channel: CAM values outside [LOW, HIGH] are set to 0 before the contours")
    g.add_argument("--min-contour-area", type=non_negative_float, default=20, help="Gaussian channel: smaller contours are skipped")
    g.add_argument("--degenerate-contours", type=str, default="skip", choices=["skip", "nan"],
                   help="skip: a contour whose Gaussian is not finite adds nothing; nan: the authors' "
                        "NaN channel")
    parser.set_defaults(batch_size=64, pretrained="none")
    return parser


CAM_TEST_INHERITS = Inherit(folder="output_dir", options=("backbone", "output_stride"), soft=("resize_size",),
                            unless="checkpoint")
CAM_TEST_OUTPUTS = ("pseudo_masks", "pseudo_masks.json")


def seg_train_parser() -> argparse.ArgumentParser:
    """``spol/seg/train.py``."""
    parser = stage_parser("spol/seg/train.py", "SPOL seg stage: train the segmentation model on pseudo masks")
    add_common_args(parser)
    add_spol_args(parser)
    _add_backbone_arg(parser)
    add_sgd_args(parser, lr=0.02, backbone_lr_mult=1.0)
    g = parser.add_argument_group("seg")
    g.add_argument("--mask-dir", type=str, default=None,
                   help="pseudo masks (default output/spol/<dataset>/cam/pseudo_masks, from spol/cam/test.py)")
    g.add_argument("--split", type=str, default="train")
    add_geometry_args(g, resize_help="resize to N x N", crop_help="random crop")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--target-threshold", type=probability, default=0.25,  # spol.losses.TARGET_THRESHOLD
                   help="seg target: pseudo-mask CAM or Gaussian channel above it is foreground")
    parser.set_defaults(batch_size=128, epochs=8)
    return parser


def seg_test_parser() -> argparse.ArgumentParser:
    """``spol/seg/test.py``."""
    parser = stage_parser("spol/seg/test.py", "SPOL seg stage: evaluate localization")
    add_common_args(parser, train=False)
    add_spol_args(parser)
    _add_backbone_arg(parser, test=True)
    g = parser.add_argument_group("seg test")
    g.add_argument("--checkpoint", type=str, default=None,
                   help="seg model weights (default <output-dir>/model.pth, from spol/seg/train.py)")
    g.add_argument("--cls-dir", type=str, default=None,
                   help="folder with predictions.csv (default output/spol/<dataset>/cls, from spol/cls/test.py)")
    g.add_argument("--split", type=str, default="test")
    g.add_argument("--cls-results", type=str, default=None,
                   help="per-image classification results: a predictions.csv or the SPOL authors' "
                        "top1top5.npy (default <cls-dir>/predictions.csv)")
    g.add_argument("--protocol", type=str, default=BOTH, choices=protocol_choices() + [BOTH],
                   help="spol (= center_crop): the authors' computation + fixes; spol-official (= spol_official): "
                        "theirs exactly (skips images, IoU > 0.5); wsol (= resize): Choe et al.; both: spol and wsol")
    g.add_argument("--spol-threshold", type=probability, default=None,
                   help="box threshold of the SPOL protocols (default: configs/spol_<dataset>.yaml "
                        "seg_test.spol_threshold, 0.2 CUB, 0.8 ImageNet)")
    add_geometry_args(g, resize_help="center_crop/spol protocols: resize before the centre crop",
                      crop_help="input size of every protocol")
    g.add_argument("--threshold-split", type=str, default=None,
                   help="wsol protocol: held-out split the box threshold is chosen on (e.g. val)")
    g.add_argument("--threshold-layout", type=str, default=None, choices=["cub", "ilsvrc", "metadata"],
                   help="layout of the threshold split (default --layout)")
    g.add_argument("--threshold-data-root", type=str, default=None, help="its data root (default --data-root)")
    g.add_argument("--iou-threshold", type=open_fraction, default=0.5)
    g.add_argument("--iou-compare", type=str, default=None, choices=[">=", ">"],
                   help="spol and wsol protocols (default '>='); spol-official always uses the authors' '>'")
    g.add_argument("--iou-convention", type=str, default="inclusive", choices=["inclusive", "exclusive"],
                   help="wsol protocol only (the SPOL protocols use the authors' exclusive IoU)")
    g.add_argument("--cam-curve-interval", type=fraction, default=0.001)
    g.add_argument("--eval-workers", type=non_negative_int, default=0, help="processes scoring the maps")
    g.add_argument("--scoremaps", action=argparse.BooleanOptionalAction, default=True,
                   help="also save <protocol>/scoremaps/<id stem>.npy (the maps are scored in memory either way; "
                        "the saved ones are re-scored by python -m utils.evaluation, command in metrics.json)")
    g.add_argument("--grid-images", type=non_negative_int, default=16)
    parser.set_defaults(batch_size=64, pretrained="none")
    return parser


SEG_TEST_INHERITS = Inherit(folder="output_dir", options=("backbone", "output_stride"),
                            soft=("resize_size", "input_size"), unless="checkpoint")


def seg_test_outputs(args) -> tuple[str, ...]:
    """What ``spol/seg/test.py`` writes in its folder: a folder per protocol run, the summary."""
    return (*expand(args.protocol), *METRICS)


PARSERS = {"cls_train": cls_train_parser, "cls_test": cls_test_parser, "cam_train": cam_train_parser,
           "cam_test": cam_test_parser, "seg_train": seg_train_parser, "seg_test": seg_test_parser}


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


def dataset_name(args) -> str:
    if args.dataset:
        return args.dataset
    if args.layout in DATASET_OF_LAYOUT:
        return DATASET_OF_LAYOUT[args.layout]
    raise ValueError(f"--layout {args.layout}: pass --dataset cub or --dataset imagenet")


def resolve_defaults(args, stage: str):
    """Fill the options left at None that other options decide; returns ``args``. ``output_dir``: the
    stage folder ``output/spol/<cub|imagenet>/<cls|cam|seg>`` (under the repository root, never the
    current directory), shared by the stage's train and test steps (a test step reads its training
    run there and writes beside it); ``data_root``: ``dataset/CUB_200_2011`` (cub) or
    ``dataset/ILSVRC2012`` (imagenet); ``exclude_ids``: ImageNet's mislabelled image. The hand-offs
    between the folders: ``<cls>/predictions.csv`` -> seg test, ``<cam>/pseudo_masks/`` -> seg train.
    ``ValueError`` for layout metadata without ``--dataset``."""
    name = dataset_name(args)
    if args.output_dir is None:
        args.output_dir = str(stage_dir("spol", name, stage))
    if args.data_root is None:
        args.data_root = str(DEFAULT_DATA_ROOT[name])
    if args.exclude_ids is None:
        args.exclude_ids = list(IMAGENET_EXCLUDE) if name == "imagenet" else []
    return args


def default_path(value, args, stage: str, *parts) -> str:
    """``value`` when given, else ``output/spol/<dataset>/<stage>/<parts...>``."""
    return os.fspath(value) if value else os.fspath(stage_dir("spol", dataset_name(args), stage).joinpath(*parts))


def load_split(args, split: str, *, layout=None, data_root=None):
    """Records of one split (utils.data.layouts.load_records) with the stage's exclusions."""
    from utils.data.layouts import load_records

    return load_records(data_root or args.data_root, layout or args.layout, split,
                        metadata_root=args.metadata_root, exclude_ids=tuple(args.exclude_ids or ()))
