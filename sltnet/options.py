"""The command lines of the SLT-Net stage scripts, importable without torch (a script parses before
its heavy imports: ``utils.config.parse_early``), with the names they offer (``BACKBONES``, ``BOX_RULES``,
... imported by ``sltnet.model``, ``sltnet.losses``, ``sltnet.boxes``); beside each test step's parser,
what it takes from its training run and the outputs it replaces (``LOCALIZER_TEST_INHERITS``, ...);
the defaults and checks other options decide (:func:`resolve_defaults`, :func:`resolve_top_k`, ...)."""
from __future__ import annotations

import argparse
from pathlib import Path

from utils.config import add_common_args, is_training, stage_parser
from utils.options import Inherit, add_classifier_train_args, add_output_stride_arg, check_output_stride
from utils.ranges import (Range, fraction, momentum, non_negative_float, non_negative_int, open_fraction,
                          positive_float, positive_int, probability)
from utils.paths import DATASET_DIR, METRICS, TRAIN_ARGS, stage_dir
from utils.evaluation.protocol import choices as protocol_choices

BACKBONES = ("vgg16", "inception_v3", "resnet18", "resnet50", "densenet161")
BOX_RULES = ("zhou", "choe")
BOX_SCALES = ("stride", "input")
SMT_VARIANTS = ("eq8", "exclude-topk")
TEACHER_MAPS = ("acam", "acam-label", "gt")
VST_BN = ("update", "frozen")
REGRESSOR_POOLS = ("gap", "grid")

METHOD = "sltnet"
# Sec. 4.1: VGG16 resize 256 crop 224, InceptionV3 resize 320 crop 299 (ResNet50 / DenseNet161: as VGG16)
GEOMETRY = {"vgg16": (256, 224), "inception_v3": (320, 299), "resnet18": (256, 224), "resnet50": (256, 224), "densenet161": (256, 224)}
DATASET_NAME = {"cub": "cub", "ilsvrc": "imagenet", "metadata": "metadata"}
DEFAULT_DATA_ROOT = {"cub": DATASET_DIR / "CUB_200_2011", "ilsvrc": DATASET_DIR / "ILSVRC2012",
                     "metadata": DATASET_DIR / "CUB_200_2011"}
# the script that writes a stage folder's model.pth
PRODUCER = {"localizer": "sltnet/localizer/train.py", "regressor": "sltnet/regressor/train.py",
            "classifier": "sltnet/classifier/train.py"}


def threshold_or_best(text: str) -> float | str:
    """``type=`` of the localizer test's --box-threshold: a fraction of the map's max in [0, 1], or ``best``."""
    if str(text).strip().lower() == "best":
        return "best"
    try:
        return probability(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1] or 'best', got {text!r}") from None


def add_dataset_arg(group) -> None:
    """``--dataset``: names the default folders."""
    group.add_argument("--dataset", type=str, default=None,
                       help="folder name under output/sltnet/ (default: cub, imagenet or metadata from --layout)")


def add_top_k_args(group, *, test: bool = False) -> None:
    """``--top-k`` and ``--top-k-ratio`` (K as a fraction of the class count, :func:`resolve_top_k`)."""
    group.add_argument("--top-k", type=positive_int, default=30,
                       help="K of the top-K ACAM (Eq. 9; CUB 30, ILSVRC 100); default as trained (args.yaml), a "
                            "value given here wins" if test else
                       "K of SMT (Eq. 8), top-K ACAM (Eq. 9) and --vst-maps topk (CUB 30, ILSVRC 100)")
    group.add_argument("--top-k-ratio", type=fraction, default=None,
                       help="K as a fraction R of the dataset's class count C: K = max(1, R x C rounded half up), "
                            "computed once the dataset is loaded and written to args.yaml as top_k (the paper: "
                            "30 / 200 = 0.15 CUB, 100 / 1000 = 0.10 ILSVRC); wins over --top-k (one notice line "
                            "when both are given and differ)")


def add_teacher_map_arg(group, *, test: bool) -> None:
    """``--teacher-map``: the map the boxes are read from (the joint regressor's targets in training,
    boxes.csv in the localizer test)."""
    what = ("the map this step boxes (boxes.csv, scoremaps, the GT-known Loc), on any split; with --split "
            "train these are the standalone regressor's targets; recorded in boxes.json") if test else \
        "the map whose box is the jointly trained regressor's target (Fig. 2a)"
    group.add_argument("--teacher-map", type=str, default="acam", choices=list(TEACHER_MAPS),
                       help=f"{what}: acam (the map --acam names: top-K ACAM of the predicted classes, Eq. 9; "
                            "with --no-acam the ground-truth class's CAM), acam-label (top-K ACAM whose K classes "
                            "include the known label: it replaces the K-th predicted class when it is not among "
                            "the top-K; not the paper's), gt (the CAM of the labelled class)")


def resolve_top_k(args, num_classes: int, explicit: set[str] | None = None) -> int:
    """``args.top_k`` from ``args.top_k_ratio`` when that is given: ``K = max(1, floor(R x C + 1/2))``
    (R x C rounded half up) for the dataset's ``num_classes`` C; returns K.

    The ratio wins over --top-k; when --top-k was given too (``explicit``: the options given on the
    command line or in --config) with another value, one notice line says so.
    """
    import math
    import os
    import sys

    ratio = getattr(args, "top_k_ratio", None)
    if ratio is None:
        return args.top_k
    k = max(1, int(math.floor(float(ratio) * int(num_classes) + 0.5)))
    if explicit is not None and "top_k" in explicit and args.top_k != k \
            and int(os.environ.get("RANK", "0")) == 0:
        print(f"notice: --top-k-ratio {ratio} gives K = {k} of {num_classes} classes; it wins over "
              f"--top-k {args.top_k}", file=sys.stderr, flush=True)
    args.top_k = k
    return k


def add_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("sltnet model")
    g.add_argument("--backbone", type=str, default="vgg16", choices=list(BACKBONES))
    add_dataset_arg(g)
    g.add_argument("--resize-size", type=positive_int, default=None, help="default per backbone: 256 (320 InceptionV3)")
    g.add_argument("--input-size", type=positive_int, default=None, help="crop / test size: 224 (299 InceptionV3)")
    g.add_argument("--cam-feature", type=str, default=None,
                   help="backbone block the localizer ends at (default: vgg16 conv5, inception_v3 mixed_6e, "
                        "resnet50 layer4, densenet161 features)")
    add_output_stride_arg(g, test=True)
    g.add_argument("--extra-conv", type=non_negative_int, default=None,
                   help="channels of the 3x3 conv + ReLU before GAP, 0 = none (default 1024 VGG16/InceptionV3, 0 others)")
    g.add_argument("--regressor-feature", type=str, default=None,
                   help="regressor backbone block (default: the backbone's last block)")
    g.add_argument("--regressor-hidden", type=positive_int, default=512, help="width of the regressor's first FC layer")
    g.add_argument("--regressor-final-relu", action=argparse.BooleanOptionalAction, default=True,
                   help="ReLU after the regressor's second FC layer as after the first (Sec. 3.1: FC-ReLU-FC-ReLU); "
                        "--no-regressor-final-relu: linear output")
    g.add_argument("--regressor-pool", type=str, default="gap", choices=list(REGRESSOR_POOLS),
                   help="pooling of the regressor's feature map before its FC layers: gap (global average, one "
                        "value per channel; position is lost) or grid (adaptive average pooling to "
                        "--regressor-grid x --regressor-grid cells, flattened, so that position survives; not in "
                        "the paper). Test: default as trained (args.yaml)")
    g.add_argument("--regressor-grid", type=positive_int, default=4,
                   help="N of --regressor-pool grid (N x N cells; the first FC layer takes channels x N x N "
                        "inputs); not read with gap. Test: default as trained (args.yaml)")
    g.add_argument("--box-scale", type=str, default=None, choices=list(BOX_SCALES),
                   help="what the regressor's box is divided by: stride (Sec. 3.1: m, the localizer's downsampling "
                        "factor; the training default) or input (the input size). Test: default as trained (args.yaml)")
    g.add_argument("--box-stride", type=positive_float, default=None,
                   help="m for --box-scale stride (default: the stride of the localizer whose maps give the boxes; "
                        "test: as trained)")
    g.add_argument("--share-backbone", action=argparse.BooleanOptionalAction, default=False,
                   help="regressor head on the localizer's features instead of its own backbone")
    return parser


# The options of add_model_args that build the network: a test step reads them from its training run
# (refusing a given value that differs), and the input geometry when not given.
MODEL_OPTIONS = ("backbone", "output_stride", "cam_feature", "extra_conv", "regressor_feature", "regressor_hidden",
                 "regressor_final_relu", "regressor_pool", "regressor_grid", "share_backbone")
GEOMETRY_OPTIONS = ("resize_size", "input_size")


def add_classifier_stage_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The model / geometry options of the classifier stage (named as in the other SLT-Net stages)."""
    g = parser.add_argument_group("sltnet classifier")
    g.add_argument("--backbone", type=str, default="vgg16", choices=list(BACKBONES),
                   help="classifier network (the paper uses the regressor's backbone type)")
    add_dataset_arg(g)
    g.add_argument("--resize-size", type=positive_int, default=None, help="default per backbone: 256 (320 InceptionV3)")
    g.add_argument("--input-size", type=positive_int, default=None, help="crop size: 224 (299 InceptionV3)")
    return parser


def add_optim_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("optimizer (Sec. 4.1: SGD, momentum 0.9, wd 5e-4, lr 2e-4, batch 16)")
    g.add_argument("--lr", type=positive_float, default=2e-4)
    g.add_argument("--momentum", type=momentum, default=0.9)
    g.add_argument("--weight-decay", type=non_negative_float, default=5e-4)
    g.add_argument("--head-lr-mult", type=non_negative_float, default=1.0,
                   help="lr multiplier of the newly initialised layers: the localizer's extra conv and classifier "
                        "(at --lr x this) and the regressor's FC head (at the regressor's lr x this); the paper "
                        "names one lr (1.0)")
    g.add_argument("--regressor-lr", type=positive_float, default=None,
                   help="lr of the regressor's pretrained backbone, its FC head at this x --head-lr-mult "
                        "(default: --lr)")
    parser.set_defaults(batch_size=16, epochs=4)
    return parser


def add_loss_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("SLT-Net losses (each on/off for the Table 5 ablation)")
    g.add_argument("--smt", action=argparse.BooleanOptionalAction, default=True, help="L_SMT (Eq. 8), else CE")
    g.add_argument("--smt-variant", type=str, default="eq8", choices=list(SMT_VARIANTS),
                   help="eq8: Eq. 8 as written (alpha x CE when the true class is in the top-K, else CE). "
                        "exclude-topk: NOT the paper's equation: when the true class is in the top-K (the same "
                        "test as Eq. 8, ties at the K-th score inside), alpha x the cross entropy of a softmax "
                        "from which the other top-K classes are left out (every other class scoring at least "
                        "the K-th score), so that the true class is not pushed away from its K-1 most similar "
                        "classes (the paper's motivation); else CE")
    g.add_argument("--alpha", type=probability, default=0.4, help="SMT factor (CUB 0.4, ILSVRC 0.2)")
    add_top_k_args(g)
    g.add_argument("--acam", action=argparse.BooleanOptionalAction, default=True,
                   help="top-K ACAM map (Eq. 9); off: the CAM of the ground-truth class")
    add_teacher_map_arg(g, test=False)
    g.add_argument("--vst", action=argparse.BooleanOptionalAction, default=True, help="L_VST (Eq. 10-13)")
    g.add_argument("--beta", type=non_negative_float, default=10.0, help="weight of L_VST (Eq. 2)")
    g.add_argument("--vst-scale-min", type=positive_float, default=0.75)
    g.add_argument("--vst-scale-max", type=positive_float, default=1.25)
    g.add_argument("--vst-flip-prob", type=probability, default=0.5)
    jitter = ("colour jitter strength of the transformed copy (torchvision ColorJitter, drawn per image); "
              "--vst-brightness 0 --vst-contrast 0 --vst-saturation 0 --vst-hue 0 switch colour jitter off "
              "(the batch is passed on untouched)")
    g.add_argument("--vst-brightness", type=non_negative_float, default=0.4, help=jitter)
    g.add_argument("--vst-contrast", type=non_negative_float, default=0.4, help=jitter)
    g.add_argument("--vst-saturation", type=non_negative_float, default=0.4, help=jitter)
    g.add_argument("--vst-hue", type=Range(float, 0, 0.5), default=0.1,
                   help=jitter + "; hue 0: no hue shift (brightness, contrast and saturation keep each pixel's "
                                 "hue, except where a channel is clipped to [0, 1])")
    g.add_argument("--vst-bn", type=str, default="update", choices=list(VST_BN),
                   help="BatchNorm running statistics in the transformed copy's pass: update (as the original "
                        "pass does) or frozen (that pass still normalises with its batch statistics, but leaves "
                        "running_mean / running_var / num_batches_tracked unchanged); the paper is silent")
    g.add_argument("--vst-normalize", type=str, default="none", choices=["none", "max", "minmax"],
                   help="CAM normalisation before the MSE of Eq. 13")
    g.add_argument("--vst-maps", type=str, default="all", choices=["all", "topk", "gt"],
                   help="maps in L_VST: all C, the top-K of the original image, or the GT class")
    g.add_argument("--vst-detach-original", action=argparse.BooleanOptionalAction, default=False,
                   help="stop the gradient of L_VST through the original image's maps M^o (paper silent)")
    g.add_argument("--vst-reduction", type=str, default="eq13", choices=["eq13", "mean"],
                   help="eq13: Eq. 13 as written (sum over the C maps, mean over W x H, mean over the batch); "
                        "mean: also divided by C (per-map mean)")
    g.add_argument("--vst-border", type=str, default="mask", choices=["mask", "keep"],
                   help="cells that the inverse of a down-scaled copy extrapolates: left out of L_VST (mask) or kept")
    g.add_argument("--reg-weight", type=non_negative_float, default=1.0, help="weight of L_REG (Eq. 1 uses 1)")
    g.add_argument("--box-threshold", type=probability, default=0.2,
                   help="pseudo-box threshold, fraction of the map's max (CAM's 20%%)")
    g.add_argument("--box-rule", type=str, default="zhou", choices=list(BOX_RULES),
                   help="pseudo-box rule: zhou (CAM's: raw map > t * max, largest connected component) or "
                        "choe (min-max normalised, uint8 > int(t * max), the wsol evaluator's)")
    return parser


def localizer_train_parser() -> argparse.ArgumentParser:
    """``sltnet/localizer/train.py``."""
    parser = stage_parser("sltnet/localizer/train.py", "SLT-Net localizer + regressor training (Fig. 2a)")
    add_common_args(parser)
    add_model_args(parser)
    add_optim_args(parser)
    add_loss_args(parser)
    g = parser.add_argument_group("data")
    g.add_argument("--split", type=str, default="train")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                   help="random horizontal flip after the random crop (data augmentation)")
    return parser


def localizer_test_parser() -> argparse.ArgumentParser:
    """``sltnet/localizer/test.py``."""
    parser = stage_parser("sltnet/localizer/test.py", "SLT-Net localizer evaluation, pseudo boxes and score maps")
    add_common_args(parser, train=False)
    add_model_args(parser)
    g = parser.add_argument_group("localizer test")
    g.add_argument("--split", type=str, default="test", help="test / val, or train for the regressor's targets")
    g.add_argument("--localizer-dir", type=str, default=None, help="localizer stage folder (model.pth)")
    g.add_argument("--weights", type=str, default=None, help="default: <localizer-dir>/model.pth")
    g.add_argument("--protocol", type=str, default="wsol", choices=protocol_choices("resize", "center_crop"),
                   help="wsol (= resize): whole image resized to input size; spol (= center_crop): resize then centre crop")
    g.add_argument("--acam", action=argparse.BooleanOptionalAction, default=True)
    add_top_k_args(g, test=True)
    add_teacher_map_arg(g, test=True)
    g.add_argument("--box-threshold", type=threshold_or_best, default=0.2,
                   help="box threshold, fraction of the map's max (CAM's 20%%); best (--split train only, needs "
                        "its GT boxes): the threshold of 0.05, 0.06, ..., 0.95 with the highest GT-known Loc of "
                        "this split's maps under --box-rule (recorded in metrics.json and boxes.json); it uses "
                        "the training images' boxes, which weak supervision does not grant")
    g.add_argument("--box-rule", type=str, default="zhou", choices=list(BOX_RULES),
                   help="zhou: CAM's rule on the raw map (> t * max, largest connected component; the paper's); "
                        "choe: min-max normalised map, uint8 > int(t * max) (the wsol evaluator's rule)")
    g.add_argument("--iou-threshold", type=open_fraction, default=0.5)
    g.add_argument("--iou-compare", type=str, default=">=", choices=[">=", ">"])
    g.add_argument("--cam-curve-interval", type=fraction, default=0.001, help="MaxBoxAccV2 threshold step")
    g.add_argument("--maxboxacc", action=argparse.BooleanOptionalAction, default=True,
                   help="also score the maps (in memory) as the protocol scores any map: MaxBoxAcc, MaxBoxAccV2, PxAP")
    g.add_argument("--scoremaps", action=argparse.BooleanOptionalAction, default=True,
                   help="also save scoremaps/<id stem>.npy (re-scored by python -m utils.evaluation)")
    parser.set_defaults(batch_size=32)
    return parser


# K (--top-k, resolved from --top-k-ratio when that was given) is taken when not given, never refused
LOCALIZER_TEST_INHERITS = Inherit(folder="localizer_dir", options=MODEL_OPTIONS, soft=(*GEOMETRY_OPTIONS, "top_k"),
                                  unless="weights")
LOCALIZER_TEST_OUTPUTS = ("scoremaps", "boxes.csv", "boxes.json", *METRICS, "evaluate.json")


def regressor_train_parser() -> argparse.ArgumentParser:
    """``sltnet/regressor/train.py``."""
    parser = stage_parser("sltnet/regressor/train.py", "SLT-Net regressor training from saved pseudo boxes")
    add_common_args(parser)
    add_model_args(parser)
    add_optim_args(parser)
    g = parser.add_argument_group("regressor")
    g.add_argument("--split", type=str, default="train")
    g.add_argument("--pseudo-box-backbone", type=str, default=None, choices=list(BACKBONES),
                   help="the localizer whose boxes are learnt (Table 6: inception_v3 for ILSVRC, vgg16 for CUB); "
                        "default: --backbone")
    g.add_argument("--localizer-dir", type=str, default=None,
                   help="that localizer's stage folder "
                        "(default: output/sltnet/<dataset>/<pseudo-box-backbone>/localizer)")
    g.add_argument("--boxes", type=str, default=None, help="pseudo boxes (default: <localizer-dir>/train/boxes.csv)")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True)
    return parser


def regressor_test_parser() -> argparse.ArgumentParser:
    """``sltnet/regressor/test.py``."""
    parser = stage_parser("sltnet/regressor/test.py", "SLT-Net final evaluation: regressor boxes + classifier classes")
    add_common_args(parser, train=False)
    add_model_args(parser)
    g = parser.add_argument_group("evaluation")
    g.add_argument("--split", type=str, default="test")
    g.add_argument("--localizer-dir", type=str, default=None)
    g.add_argument("--regressor-dir", type=str, default=None)
    g.add_argument("--classifier-dir", type=str, default=None)
    g.add_argument("--regressor-source", type=str, default="localizer", choices=["localizer", "regressor"],
                   help="which stage's model.pth holds the regressor")
    g.add_argument("--weights", type=str, default=None, help="explicit regressor weights file")
    g.add_argument("--predictions", type=str, default=None,
                   help="default: <classifier-dir>/<split>/predictions.csv")
    g.add_argument("--localizer-boxes", type=str, default=None,
                   help="localizer boxes for grid.png (default: <localizer-dir>/<split>/boxes.csv if present)")
    g.add_argument("--protocol", type=str, default="wsol", choices=protocol_choices("resize", "center_crop"),
                   help="wsol (= resize): whole image resized to input size; spol (= center_crop): resize then centre crop")
    g.add_argument("--iou-threshold", type=open_fraction, default=0.5)
    g.add_argument("--iou-compare", type=str, default=">=", choices=[">=", ">"])
    g.add_argument("--grid-images", type=non_negative_int, default=16)
    g.add_argument("--top-k-ratio", type=fraction, default=None,
                   help="not read: the final box is the regressor's, no top-K map is made here; accepted (and "
                        "checked) so that one command line serves the localizer's and the final test steps")
    parser.set_defaults(batch_size=32)
    return parser


def regressor_weights(args) -> Path:
    """The weights ``sltnet/regressor/test.py`` tests: ``--weights``, else ``model.pth`` of the stage
    folder ``--regressor-source`` names."""
    return Path(args.weights) if args.weights else Path(getattr(args, f"{args.regressor_source}_dir")) / "model.pth"


# The network as its training run built it (the stage folder --regressor-source names; not with
# --weights), and the box encoding of the weights tested, also of --weights: the run beside them.
REGRESSOR_TEST_INHERITS = (
    Inherit(folder=lambda args: getattr(args, f"{args.regressor_source}_dir"), options=MODEL_OPTIONS,
            soft=GEOMETRY_OPTIONS, unless="weights"),
    Inherit(folder=lambda args: regressor_weights(args).parent, options=("box_scale", "box_stride")),
)
REGRESSOR_TEST_OUTPUTS = ("boxes.csv", "boxes.json", *METRICS, "grid.png")


def check_box_encoding(args) -> None:
    """The regressor test's box scale (and m for ``stride``) is known, from the regressor's training
    run (:data:`REGRESSOR_TEST_INHERITS`) or given: else one ``DataError`` line naming that run's
    options file."""
    from utils.errors import DataError

    trained = regressor_weights(args).parent / TRAIN_ARGS
    if args.box_scale is None:
        raise DataError.at(trained, None, "records no box_scale (or is not there), so the regressor's box scale is "
                           "unknown: pass --box-scale stride --box-stride M (as trained) or --box-scale input")
    if args.box_scale == "stride" and args.box_stride is None:
        raise DataError.at(trained, None, "records no box_stride for box_scale stride: pass --box-stride M "
                           "(as trained)")


def classifier_train_parser() -> argparse.ArgumentParser:
    """``sltnet/classifier/train.py``."""
    parser = stage_parser("sltnet/classifier/train.py", "SLT-Net classifier fine-tuning (cross entropy)")
    add_common_args(parser)
    add_classifier_stage_args(parser)
    g = parser.add_argument_group("optimizer")
    g.add_argument("--split", type=str, default="train")
    add_classifier_train_args(g, lr=0.01, nesterov=None)
    parser.set_defaults(epochs=30, batch_size=32)
    return parser


def classifier_test_parser() -> argparse.ArgumentParser:
    """``sltnet/classifier/test.py``."""
    parser = stage_parser("sltnet/classifier/test.py", "SLT-Net classifier predictions (predictions.csv)")
    add_common_args(parser, train=False)
    add_classifier_stage_args(parser)
    g = parser.add_argument_group("test")
    g.add_argument("--split", type=str, default="test")
    g.add_argument("--classifier-dir", type=str, default=None, help="classifier stage folder (model.pth)")
    g.add_argument("--checkpoint", type=str, default=None,
                   help="weights file (default <classifier-dir>/model.pth); 'pretrained' = ImageNet weights as they are")
    g.add_argument("--ten-crop", action=argparse.BooleanOptionalAction, default=True,
                   help="average the softmax of ten crops (else one centre crop)")
    parser.set_defaults(batch_size=32)
    return parser


CLASSIFIER_TEST_INHERITS = Inherit(folder="classifier_dir", options=("backbone",), soft=GEOMETRY_OPTIONS,
                                   unless="checkpoint")
CLASSIFIER_TEST_OUTPUTS = ("predictions.csv", *METRICS)


def check_top_k(args, num_classes: int) -> None:
    """K (``--top-k``) of SMT (Eq. 8), top-K ACAM (Eq. 9) and L_VST's top-K maps is at most the
    dataset's class count, checked once the class count is known: one ``DataError`` line (never
    clipped silently)."""
    uses = (getattr(args, "smt", False) or getattr(args, "acam", False)
            or (getattr(args, "vst", False) and getattr(args, "vst_maps", "") == "topk"))
    if uses and args.top_k > num_classes:
        from utils.errors import DataError

        raise DataError(f"--top-k {args.top_k} is larger than the dataset's {num_classes} classes: K of SMT and "
                        f"top-K ACAM must be at most {num_classes}")


PARSERS = {"localizer_train": localizer_train_parser, "localizer_test": localizer_test_parser,
           "regressor_train": regressor_train_parser, "regressor_test": regressor_test_parser,
           "classifier_train": classifier_train_parser, "classifier_test": classifier_test_parser}


def check_map_options(args) -> None:
    """One ``error:`` line (``DataError``) before anything is built for: --teacher-map acam-label with
    --no-acam (a top-K ACAM with ACAM off), --box-threshold best on a split other than train (the
    threshold may be chosen on the training split's boxes only, never on the split it is scored on)."""
    from utils.errors import DataError

    if getattr(args, "teacher_map", None) == "acam-label" and not getattr(args, "acam", True):
        raise DataError("--teacher-map acam-label is a top-K ACAM, --no-acam turns ACAM off: drop one "
                        "(--teacher-map gt is the labelled class's CAM)")
    if getattr(args, "box_threshold", None) == "best" and getattr(args, "split", "train") != "train":
        raise DataError(f"--box-threshold best chooses the threshold on the training split's GT boxes only, "
                        f"this run is on split {args.split}: pass a number (e.g. the box_threshold that "
                        "boxes.json of the train split records)")


def resolve_defaults(args: argparse.Namespace, stage: str) -> argparse.Namespace:
    """Fill the options left at None that other options decide; returns ``args``. The input geometry
    (per backbone, Sec. 4.1), the dataset name and data root (per layout), the stage folders
    ``output/sltnet/<dataset>/<backbone>/<localizer|regressor|classifier>`` (under the repository
    root; the regressor's ``--pseudo-box-backbone`` names its localizer's, Table 6) and ``output_dir``:
    the stage folder for a training step, ``<stage folder>/<split>`` for a test step, which reads its
    training run in the stage folder (the localizer's runs on the test and train splits). One
    ``DataError`` line for a training run's ``--output-stride`` its backbone lacks, and for the
    contradictions of :func:`check_map_options`."""
    test = not is_training(args)
    if not test:  # a test step's backbone may still come from its training run
        check_output_stride(args)
    check_map_options(args)
    resize, crop = GEOMETRY[args.backbone]
    args.resize_size = args.resize_size or resize
    args.input_size = args.input_size or crop
    args.dataset = args.dataset or DATASET_NAME[args.layout]
    if args.data_root is None:
        args.data_root = str(DEFAULT_DATA_ROOT[args.layout])
    if getattr(args, "pseudo_box_backbone", None) and args.localizer_dir is None:
        # Table 6: the regressor learns the boxes of one backbone's localizer (same dataset)
        args.localizer_dir = str(stage_dir(METHOD, args.dataset, "localizer", backbone=args.pseudo_box_backbone))
    for name in ("localizer_dir", "classifier_dir", "regressor_dir"):
        if hasattr(args, name) and getattr(args, name) is None:
            setattr(args, name, str(stage_dir(METHOD, args.dataset, name.split("_")[0], backbone=args.backbone)))
    if args.output_dir is None:
        if test:
            args.output_dir = str(Path(getattr(args, f"{stage}_dir")) / args.split)
        else:
            args.output_dir = str(stage_dir(METHOD, args.dataset, stage, backbone=args.backbone))
    return args
