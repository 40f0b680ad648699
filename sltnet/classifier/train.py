"""Fine-tune SLT-Net's classifier (Fig. 2b, Eq. 5: plain cross entropy), trained apart from the localizer.

CUB: an ImageNet-pretrained network of the same type as the regressor, its output layer changed to
200 classes (Sec. 4.3). ILSVRC needs no training: sltnet/classifier/test.py uses torchvision's
pretrained weights as they are (--checkpoint pretrained). Training geometry as the other stages:
resize to --resize-size, random --input-size crop, random flip. The new layer learns at --lr, the
rest at --lr x --backbone-lr-mult; the lr decays linearly per epoch (utils.classify). The paper
gives no classifier schedule: the defaults here (30 epochs, lr 0.01, x0.1, wd 1e-4) are ours.
Writes output/sltnet/<dataset>/<backbone>/classifier/{model.pth, checkpoint.pth, log.jsonl, args.yaml}.

    python3 sltnet/classifier/train.py --config configs/sltnet_cub_vgg16.yaml --data-root dataset/CUB_200_2011
    torchrun --nproc_per_node 4 sltnet/classifier/train.py --config configs/sltnet_cub_inception_v3.yaml --batch-size 8
"""
from __future__ import annotations

import argparse

from network import build_classifier
from sltnet.common import add_classifier_stage_args, resolve_args
from utils.classify import train_classifier
from utils.config import add_common_args, run_cli, save_resolved_config
from utils.data import load_records, num_classes
from utils.distributed import cleanup
from utils.engine import setup_run

STAGE = "classifier_train"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("SLT-Net classifier fine-tuning (cross entropy)")
    add_common_args(parser)
    add_classifier_stage_args(parser)
    g = parser.add_argument_group("optimizer")
    g.add_argument("--split", type=str, default="train")
    g.add_argument("--lr", type=float, default=0.01, help="lr of the new output layer")
    g.add_argument("--backbone-lr-mult", type=float, default=0.1, help="lr multiplier of the pretrained layers")
    g.add_argument("--lr-schedule", type=str, default="linear", choices=["linear", "constant"])
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True)
    parser.set_defaults(epochs=30, batch_size=32)
    return parser


def main(args):
    args = resolve_args(args, "classifier")
    ctx = setup_run(args)

    records = load_records(args.data_root, args.layout, args.split)
    n_classes = num_classes(records)
    model = build_classifier(args.backbone, n_classes, args.pretrained)
    if ctx.is_main:
        save_resolved_config(args, args.output_dir)
        print(f"{STAGE}: {args.backbone}, {len(records)} images, {n_classes} classes -> {args.output_dir}", flush=True)
    # utils.classify's option names (kept out of args.yaml, which must parse back with --config)
    cls_args = argparse.Namespace(**vars(args), arch=args.backbone, resize=args.resize_size, crop=args.input_size)
    train_classifier(model, records, cls_args, ctx, stage_name=STAGE)
    cleanup(ctx)
    return args.output_dir


if __name__ == "__main__":
    run_cli(main, get_args_parser, STAGE)
