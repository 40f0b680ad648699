"""SPOL cls stage, training: the image classifier whose Top-1/Top-5 decide Top-k Loc (CUB only).

CUB-200-2011 (EfficientNet-B7, 20 epochs, batch 16, lr 0.05 head / 0.005 backbone, linear decay
per epoch, SGD Nesterov, resize 685 x 685, random crop 600, flip)::

    python3 spol/cls/train.py --config configs/spol_cub.yaml
    torchrun --nproc_per_node 4 spol/cls/train.py --config configs/spol_cub.yaml --batch-size 4

Any backbone of ``network/`` with ``--backbone`` (e.g. ``--backbone resnet50 --resize-size 256 --input-size 224``).
On ImageNet there is no training: ``spol/cls/test.py`` uses the pretrained classifier as it is.
Needs the ImageNet weights of ``--backbone`` in ``resource/`` unless ``--pretrained none``.
Writes ``output/spol/cub/cls/``: ``model.pth`` (state dict), ``checkpoint.pth``, ``log.jsonl``, ``args.yaml``.
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by its path (python3 spol/cls/train.py): the repository root first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from spol.options import cls_train_parser as get_args_parser
from utils.config import parse_early

# run as a script: --help and bad options are answered before torch loads
ARGS = parse_early(__name__, get_args_parser, "cls_train")


from network.backbones import build_classifier
from spol.options import load_split, resolve_defaults
from utils.engine.classify import train_classifier
from utils.engine.rundir import run_cli
from utils.data.layouts import num_classes
from utils.engine.stage import save_args, start_run


def main(args):
    resolve_defaults(args, "cls")
    with start_run(args) as ctx:
        save_args(args, ctx)
        records = load_split(args, args.split)
        model = build_classifier(args.backbone, num_classes(records), args.pretrained)
        train_classifier(model, records, args, ctx, stage_name="spol_cls")
        if ctx.is_main:
            print(f"classifier written to {args.output_dir}/model.pth", flush=True)
    return args.output_dir


if __name__ == "__main__":
    run_cli(main, get_args_parser, "cls_train", args=ARGS)
