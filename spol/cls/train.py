"""SPOL cls stage, training: the image classifier whose Top-1/Top-5 decide Top-k Loc (CUB only).

CUB-200-2011 (EfficientNet-B7, 20 epochs, batch 16, lr 0.05 head / 0.005 backbone, linear decay
per epoch, SGD Nesterov, resize 685 x 685, random crop 600, flip)::

    python3 spol/cls/train.py --config configs/spol_cub.yaml
    torchrun --nproc_per_node 4 spol/cls/train.py --config configs/spol_cub.yaml --batch-size 4

Any backbone of ``network/`` with ``--arch`` (e.g. ``--arch resnet50 --resize 256 --crop 224``).
On ImageNet there is no training: ``spol/cls/test.py`` uses the pretrained classifier as it is.
Needs the ImageNet weights of ``--arch`` in ``resource/`` unless ``--pretrained none``.
Writes ``output/spol/cub/cls/``: ``model.pth`` (state dict), ``checkpoint.pth``, ``log.jsonl``, ``args.yaml``.
"""
from __future__ import annotations

import argparse

from network.backbones import build_classifier
from spol.common import add_spol_args, load_split, resolve_defaults
from utils.classify import add_classifier_args, train_classifier
from utils.config import add_common_args, run_cli, save_resolved_config
from utils.data import num_classes
from utils.distributed import cleanup
from utils.engine import setup_run


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("SPOL cls stage: train the classifier")
    add_common_args(parser)
    add_spol_args(parser)
    add_classifier_args(parser, train=True)
    parser.set_defaults(batch_size=16, epochs=20, resize=685, crop=600)
    return parser


def main(args):
    resolve_defaults(args, "cls")
    ctx = setup_run(args)
    if ctx.is_main:
        save_resolved_config(args, args.output_dir)
    records = load_split(args, args.split)
    model = build_classifier(args.arch, num_classes(records), args.pretrained)
    train_classifier(model, records, args, ctx, stage_name="spol_cls")
    if ctx.is_main:
        print(f"classifier written to {args.output_dir}/model.pth", flush=True)
    cleanup(ctx)
    return args.output_dir


if __name__ == "__main__":
    run_cli(main, get_args_parser, "cls_train")
