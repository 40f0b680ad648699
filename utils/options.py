"""Option groups that scripts of both methods share, importable without torch (``--help`` answers
before the heavy imports; see ``utils.config.parse_early``), and :class:`Inherit`, the declaration of
what a test step takes from its training run. The valid range of each option is a ``type=`` of
:mod:`utils.ranges`."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

from utils.config import HelpFormatter, OptionParser
from utils.ranges import (fraction, momentum, non_negative_float, non_negative_int, open_fraction,
                          positive_float, positive_int, probability)


ARCHS = ("vgg16", "inception_v3", "resnet18", "resnet50", "densenet161", "efficientnet_b7")
# network.backbones.OUTPUT_STRIDES and RESNETS, the backbones that take another output stride than 32
# (that module loads torch; tests/unit/test_cli.py checks that they agree)
OUTPUT_STRIDES = (8, 16, 32)
OUTPUT_STRIDE_BACKBONES = ("resnet18", "resnet50")
# utils.evaluation.protocol.CHOICES, the evaluation protocols by either name (the base imports no
# wing; tests/unit/test_cli.py checks that they agree)
EVALUATE_PROTOCOLS = ("wsol", "spol", "spol-official", "resize", "center_crop", "spol_official")


@dataclass(frozen=True)
class Inherit:
    """What a test step takes from its training run; each method declares it beside the parser of the
    options concerned, and ``utils.engine.stage.start_run(args, inherit=...)`` applies it.

    ``folder``: the option naming the training run's folder (``"localizer_dir"``), or a function of
    the parsed options giving it. ``options``: read from that run's ``args.yaml`` (else its
    ``checkpoint.pth``) when not given; given with another value, one ``error:`` line naming both.
    ``soft``: read when not given, never refused (input geometry, K). ``unless``: the option naming an
    explicit weights file; when it is given nothing is read (the options then describe those weights).
    """
    folder: str | Callable[[Any], Any]
    options: tuple[str, ...] = ()
    soft: tuple[str, ...] = ()
    unless: str | None = None

    def folder_of(self, args) -> Any:
        """The training run's folder for ``args`` (None: none to read)."""
        return self.folder(args) if callable(self.folder) else getattr(args, self.folder, None)


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
    g.add_argument("--backbone", type=str, default="efficientnet_b7", choices=ARCHS, help="torchvision classifier")
    g.add_argument("--split", type=str, default="train" if train else "test", help="dataset split")
    g.add_argument("--resize-size", type=positive_int, default=256, help="images are resized to N x N")
    g.add_argument("--input-size", type=positive_int, default=None,
                   help="crop size (train: random crop; test: centre crop, or the ten-crop size; none: the "
                        "resized image is the input)")
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
    """The optimiser and augmentation options of ``utils.engine.classify.train_classifier`` (both methods'
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
    """``python -m utils.evaluation`` (``utils.evaluation.evaluate.get_args_parser``)."""
    p = OptionParser(prog="python -m utils.evaluation", formatter_class=HelpFormatter,
                     description="Evaluate saved score maps (GT-known/Top-k Loc, MaxBoxAcc(V2), PxAP) or a file of "
                                 "predicted boxes (GT-known/Top-k Loc, box accuracy at IoU 0.3/0.5/0.7)")
    p.add_argument("--data-root", required=True)
    p.add_argument("--layout", required=True, choices=("cub", "ilsvrc", "metadata", "openimages"),
                   help="openimages: Choe et al.'s OpenImages30k metadata and masks, scored with PxAP only")
    p.add_argument("--metadata-root", default=None,
                   help="for --layout metadata / openimages (default <data-root>/metadata)")
    p.add_argument("--split", required=True)
    p.add_argument("--exclude-ids", nargs="*", default=(),
                   help="image ids / file names left out (SPOL leaves out ILSVRC2012_val_00033202.JPEG)")
    scored = p.add_mutually_exclusive_group(required=True)
    scored.add_argument("--scoremaps", help="folder of score maps: <image id stem>.npy (ours) or <image id>.npy "
                                            "(Choe et al.'s)")
    scored.add_argument("--boxes", help="file of predicted boxes, one per image: a boxes.csv (input pixels of the "
                                        "protocol its boxes.json names; without one, original pixels) or lines "
                                        "'<image_id> x0 y0 x1 y1' in original pixels (docs/evaluation.md)")
    p.add_argument("--protocol", required=True, choices=EVALUATE_PROTOCOLS)
    p.add_argument("--cam-curve-interval", type=fraction, default=0.001, help="sweep step, in (0, 1]")
    p.add_argument("--threshold", type=probability, default=None,
                   help="fixed box threshold in [0, 1] (resize/wsol: default = best of the sweep; the SPOL protocols "
                        "need it: 0.2 CUB, 0.8 ImageNet, configs/spol_*.yaml); --scoremaps only")
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
