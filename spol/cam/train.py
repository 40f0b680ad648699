"""SPOL cam stage, training: the multiplicative shallow x deep CAM model on image labels.

CUB-200-2011 (two-head loss, 32 epochs, batch 64, head lr 0.02, backbone lr 0.002)::

    python3 spol/cam/train.py --config configs/spol_cub.yaml
    torchrun --nproc_per_node 4 spol/cam/train.py --config configs/spol_cub.yaml --batch-size 16

ImageNet-1K (one head, conv1/bn1 frozen, 1 epoch, checkpoint every 2000 steps)::

    python3 spol/cam/train.py --config configs/spol_imagenet.yaml
    torchrun --nproc_per_node 8 spol/cam/train.py --config configs/spol_imagenet.yaml --batch-size 16

(``--batch-size`` is per process: 4 x 16 = the reference's 64 on CUB, 8 x 16 = 128 on ImageNet.)
Writes ``output/spol/<cub|imagenet>/cam/``: ``model.pth`` (state dict, loadable by
``spol/cam/test.py``), ``checkpoint.pth`` (auto-resume), ``log.jsonl``, ``args.yaml``.
Needs ``resource/resnet50-19c8e357.pth`` unless ``--pretrained none``.
"""
from __future__ import annotations

import argparse

from spol.common import (add_sgd_args, add_spol_args, drop_last_needed, load_split, resolve_defaults,
                         spol_param_groups)
from spol.losses import cub_cam_loss, imagenet_cam_loss, map_logits
from spol.model import CAMModel
from utils.config import add_common_args, run_cli, save_resolved_config
from utils.data import WSOLDataset, build_spol_transform, num_classes
from utils.distributed import cleanup
from utils.engine import Trainer, build_optimizer, setup_run


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("SPOL cam stage: train the CAM model", add_help=True)
    add_common_args(parser)
    add_spol_args(parser)
    add_sgd_args(parser, lr=0.02, backbone_lr_mult=0.1)
    g = parser.add_argument_group("cam")
    g.add_argument("--loss", type=str, default="two_head", choices=["two_head", "single_head"],
                   help="two_head: CUB's (CE(deep) + softCE(fused, softmax(deep))) / 2; "
                        "single_head: ImageNet's CE(fused)")
    g.add_argument("--freeze-stem", action=argparse.BooleanOptionalAction, default=False,
                   help="freeze conv1/bn1 of the backbone (the reference's ImageNet setting)")
    g.add_argument("--split", type=str, default="train")
    g.add_argument("--resize", type=int, default=256, help="resize to resize x resize")
    g.add_argument("--crop", type=int, default=224, help="random crop")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True)
    parser.set_defaults(batch_size=64, epochs=32)
    return parser


def cam_loss_fn(loss: str):
    """``Trainer`` loss: ``relu(linear(dropout(x)))`` class maps -> spatial-mean logits -> the chosen
    CAM loss (the authors' order: ReLU per position, then the mean)."""
    def loss_fn(model, batch):
        labels = batch["label"]
        if loss == "two_head":
            deep, fused = model(batch["image"])
            pred1, pred2 = map_logits(deep).float(), map_logits(fused).float()
            value = cub_cam_loss(pred1, pred2, labels)
        else:  # the authors' ImageNet model: one dropout draw, on the fused map only
            _, fused = model(batch["image"], single_head=True)
            pred2 = map_logits(fused).float()
            value = imagenet_cam_loss(pred2, labels)
        acc = (pred2.argmax(1) == labels).float().mean()
        return value, {"top1_fused": float(acc)}
    return loss_fn


def main(args):
    resolve_defaults(args, "cam")
    ctx = setup_run(args)
    if ctx.is_main:
        save_resolved_config(args, args.output_dir)
    records = load_split(args, args.split)
    transform = build_spol_transform("train", resize=args.resize, crop=args.crop, flip=args.flip)
    dataset = WSOLDataset(records, transform)
    model = CAMModel(num_classes(records), pretrained=args.pretrained, freeze_stem=args.freeze_stem)
    optimizer = build_optimizer(spol_param_groups(model, args.lr, args.backbone_lr_mult, args.weight_decay), args)
    trainer = Trainer(model, optimizer, args, ctx, stage_name="spol_cam",
                      drop_last=drop_last_needed(len(dataset), args.batch_size, ctx.world_size))
    trainer.fit(dataset, cam_loss_fn(args.loss))
    if ctx.is_main:
        print(f"cam model written to {args.output_dir}/model.pth", flush=True)
    cleanup(ctx)
    return args.output_dir


if __name__ == "__main__":
    run_cli(main, get_args_parser, "cam_train")
