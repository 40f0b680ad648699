"""Fine-tune SLT-Net's classifier (Fig. 2b, Eq. 5: plain cross entropy), trained apart from the localizer.

CUB: an ImageNet-pretrained network of the same type as the regressor, its output layer changed to
200 classes (Sec. 4.3). ILSVRC needs no training: sltnet/classifier/test.py uses torchvision's
pretrained weights as they are (--checkpoint pretrained). Training geometry as the other stages:
resize to --resize-size, random --input-size crop, random flip. The new layer learns at --lr, the
rest at --lr x --backbone-lr-mult; the lr decays linearly per epoch (utils.engine.classify). The paper
gives no classifier schedule: the defaults here (30 epochs, lr 0.01, x0.1, wd 1e-4) are ours.
Writes output/sltnet/<dataset>/<backbone>/classifier/{model.pth, checkpoint.pth, log.jsonl, args.yaml}.

    python3 sltnet/classifier/train.py --config configs/sltnet_cub_vgg16.yaml --data-root dataset/CUB_200_2011
    torchrun --nproc_per_node 4 sltnet/classifier/train.py --config configs/sltnet_cub_inception_v3.yaml --batch-size 8
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by its path (python3 sltnet/classifier/train.py): the repository root first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sltnet.options import classifier_train_parser as get_args_parser
from utils.config import parse_early

# run as a script: --help and bad options are answered before torch loads
ARGS = parse_early(__name__, get_args_parser, "classifier_train")

from network import build_classifier
from sltnet.options import resolve_defaults
from utils.engine.classify import train_classifier
from utils.engine.rundir import run_cli
from utils.data.layouts import load_records, num_classes
from utils.engine.stage import save_args, start_run

STAGE = "classifier_train"


def main(args):
    resolve_defaults(args, "classifier")
    with start_run(args) as ctx:
        save_args(args, ctx)
        records = load_records(args.data_root, args.layout, args.split)
        n_classes = num_classes(records)
        model = build_classifier(args.backbone, n_classes, args.pretrained)
        if ctx.is_main:
            print(f"{STAGE}: {args.backbone}, {len(records)} images, {n_classes} classes -> {args.output_dir}",
                  flush=True)
        train_classifier(model, records, args, ctx, stage_name=STAGE)
    return args.output_dir


if __name__ == "__main__":
    run_cli(main, get_args_parser, STAGE, args=ARGS)
