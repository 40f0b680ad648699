"""Option groups that scripts of both methods share, importable without torch (``--help`` answers
before the heavy imports; see ``utils.config.parse_early``), and the valid range of every option.

Ranges are declared once, as argparse ``type=`` callables (:class:`Range`: :data:`positive_int`,
:data:`fraction`, :data:`probability`, ...), so that a value out of range is refused by argparse
itself, on the command line and in a ``--config`` file (``utils.config._checked`` converts YAML values
with the same ``type``), before any work: ``error: argument --epochs: must be an integer >= 1, got
'0'``. What one option cannot say alone (a crop larger than the resize, a split the layout does not
have) is checked by :func:`check_options` after parsing and again once the derived defaults are
filled (``utils.seeding.setup_run``).
"""
from __future__ import annotations

import argparse
import math

from utils.config import HelpFormatter, OptionParser, add_alias
from utils.protocol import CHOICES as EVALUATE_PROTOCOLS


class Range:
    """An argparse ``type=``: an ``int`` or ``float`` within ``[low, high]`` (an end left open with
    ``low_open`` / ``high_open``; None = unbounded). Refuses NaN and infinities."""

    def __init__(self, kind: type, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False):
        self.kind, self.low, self.high, self.low_open, self.high_open = kind, low, high, low_open, high_open
        self.__name__ = kind.__name__  # argparse names the type in its messages

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            return (f"{what} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{what} {'<' if self.high_open else '<='} {self.high:g}"
        return what

    def contains(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def __call__(self, text):
        try:
            value = self.kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}") from None
        if (self.kind is float and not math.isfinite(value)) or not self.contains(value):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}")
        return value

    def __repr__(self) -> str:
        return f"Range({self.describe()})"


positive_int = Range(int, 1)                                        # counts: epochs, batch size, sizes, K
non_negative_int = Range(int, 0)                                    # workers, intervals where 0 = off
positive_float = Range(float, 0, low_open=True)                     # learning rates, strides, scales
non_negative_float = Range(float, 0)                                # weights, multipliers, decay
fraction = Range(float, 0, 1, low_open=True)                        # (0, 1]: threshold-sweep intervals
probability = Range(float, 0, 1)                                    # [0, 1]: thresholds, alpha, probabilities
open_fraction = Range(float, 0, 1, low_open=True, high_open=True)   # (0, 1): IoU thresholds
momentum = Range(float, 0, 1, high_open=True)                       # [0, 1): SGD momentum

def _fail(message: str):
    from utils.errors import DataError

    raise DataError(message)


def check_options(args, only: set[str] | None = None) -> None:
    """The ranges one option cannot check alone, on whatever ``args`` holds (an option missing or
    None is not checked yet): ``--input-size`` <= ``--resize-size`` (the crop fits in the resized
    image), ``LOW <= HIGH`` pairs, and a ``--split`` the layout has. One ``DataError`` line naming
    the options. ``only``: check just the options named there (the ones given, at parse time: a
    default may still be replaced, e.g. by a test step's training run)."""
    get = lambda name: getattr(args, name, None) if only is None or name in only else None  # noqa: E731
    crop, resize = get("input_size"), get("resize_size")
    if crop is not None and resize is not None and crop > resize:
        _fail(f"--input-size {crop} is larger than --resize-size {resize}: the crop is cut from the resized "
              "image, so it must fit in it")
    for low, high, what in (("vst_scale_min", "vst_scale_max", "scale range"),):
        if get(low) is not None and get(high) is not None and get(low) > get(high):
            _fail(f"--{low.replace('_', '-')} {get(low)} is larger than --{high.replace('_', '-')} {get(high)}")
    for name in ("band", "object_scale"):
        pair = get(name)
        if isinstance(pair, (list, tuple)) and len(pair) == 2 and pair[0] > pair[1]:
            _fail(f"--{name.replace('_', '-')} {pair[0]} {pair[1]}: the first value must not be larger than the second")
    from utils.layouts import LAYOUT_SPLITS

    for split_name, layout_name in (("split", "layout"), ("threshold_split", "threshold_layout")):
        split, its_layout = get(split_name), getattr(args, layout_name, None) or getattr(args, "layout", None)
        if split is not None and its_layout in LAYOUT_SPLITS and split not in LAYOUT_SPLITS[its_layout]:
            _fail(f"--{split_name.replace('_', '-')} {split}: the '{its_layout}' layout has the splits "
                  f"{' and '.join(LAYOUT_SPLITS[its_layout])}")

ARCHS = ("vgg16", "inception_v3", "resnet18", "resnet50", "densenet161", "efficientnet_b7")
# network.backbones.OUTPUT_STRIDES and RESNETS, the backbones that take another output stride than 32
# (that module loads torch; tests/test_cli.py checks that they agree)
OUTPUT_STRIDES = (8, 16, 32)
OUTPUT_STRIDE_BACKBONES = ("resnet18", "resnet50")


def check_output_stride(args) -> None:
    """A training run's ``--output-stride`` other than 32 on a backbone without it: one ``error:``
    line before anything is built (``network.backbones`` would raise the same as a ValueError)."""
    output_stride = getattr(args, "output_stride", 32)
    if output_stride != 32 and args.backbone not in OUTPUT_STRIDE_BACKBONES:
        from utils.errors import DataError

        raise DataError(f"--output-stride {output_stride}: backbone {args.backbone} has output stride 32 only "
                        f"(16 and 8: {', '.join(OUTPUT_STRIDE_BACKBONES)})")


def add_output_stride_arg(group, *, test: bool = False) -> None:
    """``--output-stride`` of the ResNet backbones (``network.backbones.ResNetBackbone``): not in
    either paper (both use torchvision's stride 32, the default); finer maps for small inputs."""
    group.add_argument("--output-stride", type=int, default=32, choices=list(OUTPUT_STRIDES),
                       help="stride of the ResNet backbone's layer4: 32 (torchvision's, the paper's), 16 (layer4 "
                            "at layer3's resolution) or 8 (layer3 and layer4 at layer2's), by stride-1 first blocks "
                            "(no dilation, same weights); not in the paper, for small inputs"
                            + ("; test: default as trained (args.yaml)" if test else ""))


def add_classifier_args(parser: argparse.ArgumentParser, *, train: bool) -> argparse.ArgumentParser:
    """Options of a classification stage (train: optimiser and augmentation; test: views)."""
    g = parser.add_argument_group("classifier")
    add_alias(g, "--arch", g.add_argument("--backbone", type=str, default="efficientnet_b7", choices=ARCHS,
                                          help="torchvision classifier (formerly --arch)"))
    g.add_argument("--split", type=str, default="train" if train else "test", help="dataset split")
    add_alias(g, "--resize", g.add_argument("--resize-size", type=positive_int, default=256,
                                            help="images are resized to N x N (formerly --resize)"))
    add_alias(g, "--crop", g.add_argument("--input-size", type=positive_int, default=None,
                                          help="crop size (train: random crop; test: centre crop, or the ten-crop "
                                               "size; none: the resized image is the input; formerly --crop)"))
    if train:
        add_classifier_train_args(g, lr=0.05)
    else:
        g.add_argument("--checkpoint", type=str, default=None,
                       help="weights (model.pth of the train step); 'pretrained' = the ImageNet "
                            "weights from resource/ as they are (1000 classes)")
        g.add_argument("--ten-crop", action=argparse.BooleanOptionalAction, default=False,
                       help="average the softmax of ten crops of size --input-size")
    return parser


def add_classifier_train_args(group, *, lr: float, nesterov: bool | None = True) -> None:
    """The optimiser and augmentation options of ``utils.classify.train_classifier`` (both methods'
    classifier training): SGD, the new layer at ``--lr``, every other at ``--lr`` x
    ``--backbone-lr-mult``, linear decay per epoch, random flip. ``nesterov=None``: no --nesterov
    option (plain momentum)."""
    group.add_argument("--lr", type=positive_float, default=lr, help="lr of the new classification layer")
    group.add_argument("--backbone-lr-mult", type=non_negative_float, default=0.1,
                       help="lr multiplier of every other layer")
    group.add_argument("--lr-schedule", type=str, default="linear", choices=["linear", "constant"],
                       help="linear: lr * (1 - epoch / epochs), stepped per epoch")
    group.add_argument("--momentum", type=momentum, default=0.9)
    if nesterov is not None:
        group.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=nesterov)
    group.add_argument("--weight-decay", type=non_negative_float, default=1e-4)
    group.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="random horizontal flip")


def evaluate_parser() -> argparse.ArgumentParser:
    """``python -m utils.evaluate`` (``utils.evaluate.get_args_parser``)."""
    p = OptionParser(prog="python -m utils.evaluate", formatter_class=HelpFormatter,
                     description="Evaluate saved score maps (GT-known/Top-k Loc, MaxBoxAcc(V2), PxAP)")
    p.add_argument("--data-root", required=True)
    p.add_argument("--layout", required=True, choices=("cub", "ilsvrc", "metadata"))
    p.add_argument("--metadata-root", default=None, help="for --layout metadata (default <data-root>/metadata)")
    p.add_argument("--split", required=True)
    p.add_argument("--exclude-ids", nargs="*", default=(),
                   help="image ids / file names left out (SPOL leaves out ILSVRC2012_val_00033202.JPEG)")
    p.add_argument("--scoremaps", required=True, help="folder of score maps: <image id stem>.npy (ours) or <image id>.npy (Choe et al.'s)")
    p.add_argument("--protocol", required=True, choices=EVALUATE_PROTOCOLS)
    p.add_argument("--cam-curve-interval", type=fraction, default=0.001, help="sweep step, in (0, 1]")
    p.add_argument("--threshold", type=probability, default=None,
                   help="fixed box threshold in [0, 1] (resize/wsol: default = best of the sweep; the SPOL protocols "
                        "need it: 0.2 CUB, 0.8 ImageNet, configs/spol_*.yaml)")
    p.add_argument("--predictions", default=None,
                   help="predictions.csv of the classification stage, or the SPOL authors' top1top5.npy")
    p.add_argument("--iou-threshold", type=open_fraction, default=0.5, help="in (0, 1)")
    p.add_argument("--iou-compare", choices=(">=", ">"), default=">=")
    p.add_argument("--iou-convention", choices=("inclusive", "exclusive"), default="inclusive")
    p.add_argument("--input-size", type=positive_int, default=224)
    p.add_argument("--resize-size", type=positive_int, default=256,
                   help="center_crop/spol protocols: resize before the centre crop")
    p.add_argument("--workers", type=non_negative_int, default=0)
    p.add_argument("--output", required=True, help="results JSON; the table goes next to it as .txt")
    return p
