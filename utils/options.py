"""Option groups that scripts of both methods share, importable without torch (``--help`` answers
before the heavy imports; see ``utils.config.parse_early``)."""
from __future__ import annotations

import argparse

ARCHS = ("vgg16", "inception_v3", "resnet50", "densenet161", "efficientnet_b7")


def add_classifier_args(parser: argparse.ArgumentParser, *, train: bool) -> argparse.ArgumentParser:
    """Options of a classification stage (train: optimiser and augmentation; test: views)."""
    g = parser.add_argument_group("classifier")
    g.add_argument("--arch", type=str, default="efficientnet_b7", choices=ARCHS, help="torchvision classifier")
    g.add_argument("--split", type=str, default="train" if train else "test", help="dataset split")
    g.add_argument("--resize", type=int, default=256, help="images are resized to resize x resize")
    g.add_argument("--crop", type=int, default=None,
                   help="crop size (train: random crop; test: centre crop, or the ten-crop size)")
    if train:
        g.add_argument("--lr", type=float, default=0.05, help="lr of the new classification layer")
        g.add_argument("--backbone-lr-mult", type=float, default=0.1, help="lr multiplier of every other layer")
        g.add_argument("--lr-schedule", type=str, default="linear", choices=["linear", "constant"],
                       help="linear: lr * (1 - epoch / epochs), stepped per epoch")
        g.add_argument("--momentum", type=float, default=0.9)
        g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=True)
        g.add_argument("--weight-decay", type=float, default=1e-4)
        g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                       help="random horizontal flip")
    else:
        g.add_argument("--checkpoint", type=str, default=None,
                       help="weights (model.pth of the train step); 'pretrained' = the ImageNet "
                            "weights from resource/ as they are (1000 classes)")
        g.add_argument("--ten-crop", action=argparse.BooleanOptionalAction, default=False,
                       help="average the softmax of ten crops of size --crop")
    return parser
