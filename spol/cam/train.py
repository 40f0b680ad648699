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

import sys
from pathlib import Path

if not __package__:  # run by its path (python3 spol/cam/train.py): the repository root first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from spol.options import cam_train_parser as get_args_parser
from utils.config import parse_early

# run as a script: --help and bad options are answered before torch loads
ARGS = parse_early(__name__, get_args_parser, "cam_train")


from spol.options import load_split, resolve_defaults
from spol.losses import cub_cam_loss, imagenet_cam_loss, map_logits
from spol.model import CAMModel, drop_last_needed, spol_param_groups
from utils.engine.rundir import run_cli
from utils.data.dataset import WSOLDataset
from utils.data.layouts import num_classes
from utils.data.transforms import build_spol_transform
from utils.engine.trainer import Trainer, build_optimizer
from utils.engine.stage import save_args, start_run


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
    with start_run(args) as ctx:
        save_args(args, ctx)
        records = load_split(args, args.split)
        transform = build_spol_transform("train", resize=args.resize_size, crop=args.input_size, flip=args.flip)
        dataset = WSOLDataset(records, transform)
        model = CAMModel(num_classes(records), pretrained=args.pretrained, freeze_stem=args.freeze_stem,
                         backbone=args.backbone, output_stride=args.output_stride)
        optimizer = build_optimizer(spol_param_groups(model, args.lr, args.backbone_lr_mult, args.weight_decay),
                                    args)
        trainer = Trainer(model, optimizer, args, ctx, stage_name="spol_cam",
                          drop_last=drop_last_needed(len(dataset), args.batch_size, ctx.world_size))
        trainer.fit(dataset, cam_loss_fn(args.loss))
        if ctx.is_main:
            print(f"cam model written to {args.output_dir}/model.pth", flush=True)
    return args.output_dir


if __name__ == "__main__":
    run_cli(main, get_args_parser, "cam_train", args=ARGS)
