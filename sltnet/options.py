"""The command lines of the SLT-Net stage scripts, buildable without importing torch.

Each ``sltnet/<stage>/<train|test>.py`` takes its parser from here and parses ``sys.argv`` before
its heavy imports (``utils.config.parse_early``), so ``--help`` and a mistyped option are answered
at once. The option groups the stages share are here too, the names the command line offers
(``BACKBONES``, ``BOX_RULES``, ``BOX_SCALES``), which ``sltnet.model`` and ``sltnet.boxes`` import
from here, and :func:`resolve_args`: the defaults derived from other options (per-backbone
geometry, dataset name, data root, the stage folders; :data:`PRODUCER` names the script that
writes each stage folder's model.pth).

Stage folders (each with train.py / test.py): ``sltnet/localizer`` (localizer + regressor trained
together, Fig. 2a), ``sltnet/regressor`` (optional standalone regressor training from saved pseudo
boxes; the final evaluation), ``sltnet/classifier`` (the separate classifier, Fig. 2b). Default
outputs: ``output/sltnet/<cub|imagenet>/<backbone>/<localizer|regressor|classifier>``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from utils.config import add_alias, add_common_args, stage_parser
from utils.options import add_classifier_train_args, add_output_stride_arg, check_output_stride
from utils.paths import DATASET_DIR, stage_dir
from utils.evaluation.protocol import choices as protocol_choices

BACKBONES = ("vgg16", "inception_v3", "resnet18", "resnet50", "densenet161")
BOX_RULES = ("zhou", "choe")
BOX_SCALES = ("stride", "input")

METHOD = "sltnet"
# Sec. 4.1: VGG16 resize 256 crop 224, InceptionV3 resize 320 crop 299 (ResNet50 / DenseNet161: as VGG16)
GEOMETRY = {"vgg16": (256, 224), "inception_v3": (320, 299), "resnet18": (256, 224), "resnet50": (256, 224), "densenet161": (256, 224)}
DATASET_NAME = {"cub": "cub", "ilsvrc": "imagenet", "metadata": "metadata"}
DEFAULT_DATA_ROOT = {"cub": DATASET_DIR / "CUB_200_2011", "ilsvrc": DATASET_DIR / "ILSVRC2012",
                     "metadata": DATASET_DIR / "CUB_200_2011"}
# the script that writes a stage folder's model.pth
PRODUCER = {"localizer": "sltnet/localizer/train.py", "regressor": "sltnet/regressor/train.py",
            "classifier": "sltnet/classifier/train.py"}


def add_dataset_arg(group) -> None:
    """``--dataset`` (``--dataset-name`` before, still accepted): names the default folders."""
    add_alias(group, "--dataset-name", group.add_argument(
        "--dataset", type=str, default=None,
        help="folder name under output/sltnet/ (default: cub, imagenet or metadata from --layout; "
             "formerly --dataset-name)"))


def add_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("sltnet model")
    g.add_argument("--backbone", type=str, default="vgg16", choices=list(BACKBONES))
    add_dataset_arg(g)
    g.add_argument("--resize-size", type=int, default=None, help="default per backbone: 256 (320 InceptionV3)")
    g.add_argument("--input-size", type=int, default=None, help="crop / test size: 224 (299 InceptionV3)")
    g.add_argument("--cam-feature", type=str, default=None,
                   help="backbone block the localizer ends at (default: vgg16 conv5, inception_v3 mixed_6e, "
                        "resnet50 layer4, densenet161 features)")
    add_output_stride_arg(g, test=True)
    g.add_argument("--extra-conv", type=int, default=None,
                   help="channels of the 3x3 conv + ReLU before GAP, 0 = none (default 1024 VGG16/InceptionV3, 0 others)")
    g.add_argument("--regressor-feature", type=str, default=None,
                   help="regressor backbone block (default: the backbone's last block)")
    g.add_argument("--regressor-hidden", type=int, default=512, help="width of the regressor's first FC layer")
    g.add_argument("--regressor-final-relu", action=argparse.BooleanOptionalAction, default=True,
                   help="ReLU after the regressor's second FC layer as after the first (Sec. 3.1: FC-ReLU-FC-ReLU); "
                        "--no-regressor-final-relu: linear output")
    g.add_argument("--box-scale", type=str, default=None, choices=list(BOX_SCALES),
                   help="what the regressor's box is divided by: stride (Sec. 3.1: m, the localizer's downsampling "
                        "factor; the training default) or input (the input size). Test: default as trained (args.yaml)")
    g.add_argument("--box-stride", type=float, default=None,
                   help="m for --box-scale stride (default: the stride of the localizer whose maps give the boxes; "
                        "test: as trained)")
    g.add_argument("--share-backbone", action=argparse.BooleanOptionalAction, default=False,
                   help="regressor head on the localizer's features instead of its own backbone")
    return parser


def add_classifier_stage_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The model / geometry options of the classifier stage (named as in the other SLT-Net stages)."""
    g = parser.add_argument_group("sltnet classifier")
    g.add_argument("--backbone", type=str, default="vgg16", choices=list(BACKBONES),
                   help="classifier network (the paper uses the regressor's backbone type)")
    add_dataset_arg(g)
    g.add_argument("--resize-size", type=int, default=None, help="default per backbone: 256 (320 InceptionV3)")
    g.add_argument("--input-size", type=int, default=None, help="crop size: 224 (299 InceptionV3)")
    return parser


def add_optim_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("optimizer (Sec. 4.1: SGD, momentum 0.9, wd 5e-4, lr 2e-4, batch 16)")
    g.add_argument("--lr", type=float, default=2e-4)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument("--head-lr-mult", type=float, default=1.0, help="lr multiplier of the new localizer layers")
    g.add_argument("--regressor-lr", type=float, default=None, help="regressor lr (default: --lr)")
    parser.set_defaults(batch_size=16, epochs=4)
    return parser


def add_loss_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("SLT-Net losses (each on/off for the Table 5 ablation)")
    g.add_argument("--smt", action=argparse.BooleanOptionalAction, default=True, help="L_SMT (Eq. 8), else CE")
    g.add_argument("--alpha", type=float, default=0.4, help="SMT factor (CUB 0.4, ILSVRC 0.2)")
    g.add_argument("--top-k", type=int, default=30, help="K of SMT and ACAM (CUB 30, ILSVRC 100)")
    g.add_argument("--acam", action=argparse.BooleanOptionalAction, default=True,
                   help="top-K ACAM map (Eq. 9); off: the CAM of the ground-truth class")
    g.add_argument("--vst", action=argparse.BooleanOptionalAction, default=True, help="L_VST (Eq. 10-13)")
    g.add_argument("--beta", type=float, default=10.0, help="weight of L_VST (Eq. 2)")
    g.add_argument("--vst-scale-min", type=float, default=0.75)
    g.add_argument("--vst-scale-max", type=float, default=1.25)
    g.add_argument("--vst-flip-prob", type=float, default=0.5)
    g.add_argument("--vst-brightness", type=float, default=0.4)
    g.add_argument("--vst-contrast", type=float, default=0.4)
    g.add_argument("--vst-saturation", type=float, default=0.4)
    g.add_argument("--vst-hue", type=float, default=0.1)
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
    g.add_argument("--reg-weight", type=float, default=1.0, help="weight of L_REG (Eq. 1 uses 1)")
    g.add_argument("--box-threshold", type=float, default=0.2,
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
    g.add_argument("--top-k", type=int, default=30)
    g.add_argument("--box-threshold", type=float, default=0.2)
    g.add_argument("--box-rule", type=str, default="zhou", choices=list(BOX_RULES),
                   help="zhou: CAM's rule on the raw map (> t * max, largest connected component; the paper's); "
                        "choe: min-max normalised map, uint8 > int(t * max) (the wsol evaluator's rule)")
    g.add_argument("--iou-threshold", type=float, default=0.5)
    g.add_argument("--iou-compare", type=str, default=">=", choices=[">=", ">"])
    g.add_argument("--cam-curve-interval", type=float, default=0.001, help="MaxBoxAccV2 threshold step")
    g.add_argument("--maxboxacc", action=argparse.BooleanOptionalAction, default=True,
                   help="evaluate the saved score maps with utils.evaluation.evaluate (needs --scoremaps)")
    g.add_argument("--scoremaps", action=argparse.BooleanOptionalAction, default=True,
                   help="save scoremaps/<id stem>.npy")
    parser.set_defaults(batch_size=32)
    return parser


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
    g.add_argument("--iou-threshold", type=float, default=0.5)
    g.add_argument("--iou-compare", type=str, default=">=", choices=[">=", ">"])
    g.add_argument("--grid-images", type=int, default=16)
    parser.set_defaults(batch_size=32)
    return parser


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


PARSERS = {"localizer_train": localizer_train_parser, "localizer_test": localizer_test_parser,
           "regressor_train": regressor_train_parser, "regressor_test": regressor_test_parser,
           "classifier_train": classifier_train_parser, "classifier_test": classifier_test_parser}


def resolve_args(args: argparse.Namespace, stage: str, *, test_of: str | None = None) -> argparse.Namespace:
    """Fill the defaults derived from other options (paths, per-backbone input geometry).

    Training stages write into ``utils.paths.stage_dir``; a test script (``test_of`` = the stage whose
    folder it reads) writes into ``<that folder>/<split>`` unless --output-dir is given.
    """
    if test_of is None:  # a test step's backbone may still come from its training run
        check_output_stride(args)
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
        if test_of is not None:
            args.output_dir = str(Path(getattr(args, f"{test_of}_dir")) / args.split)
        else:
            args.output_dir = str(stage_dir(METHOD, args.dataset, stage, backbone=args.backbone))
    return args
