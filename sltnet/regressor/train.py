"""Train the SLT-Net box regressor alone from the localizer's saved pseudo boxes (optional path).

The paper trains the regressor together with the localizer (sltnet/localizer/train.py, Fig. 2a);
this script trains it from a fixed ``boxes.csv`` instead (e.g. the boxes of a better localizer, as
the paper's Table 6 picks VGG16's boxes for CUB and InceptionV3's for ILSVRC). The targets come
from ``sltnet/localizer/test.py --split train`` and are normalised to the whole original image.

Geometry: each image is resized to --resize-size; a random --input-size crop and a random
horizontal flip are then cut from the batch on the device, and the box moves with the image
(continuous coordinates: shift by the crop offset, clip to the crop, x -> W - x on a flip;
``sltnet.common.crop_flip_boxes``). Loss: Smooth-L1 summed over the 4 normalised coordinates (Eq. 3-4).
Writes output/sltnet/<dataset>/<backbone>/regressor/{model.pth, checkpoint.pth, log.jsonl, args.yaml}.

    python3 sltnet/localizer/test.py --config configs/sltnet_cub_vgg16.yaml --split train --no-scoremaps --no-maxboxacc
    python3 sltnet/regressor/train.py --config configs/sltnet_cub_vgg16.yaml
    torchrun --nproc_per_node 4 sltnet/regressor/train.py --config configs/sltnet_cub_vgg16.yaml --batch-size 4
    python3 sltnet/regressor/train.py --config configs/sltnet_imagenet_vgg16.yaml \
        --boxes output/sltnet/imagenet/inception_v3/localizer/train/boxes.csv
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sltnet.common import add_model_args, add_optim_args, boxes_to_image_fraction, crop_flip_boxes, resolve_args
from sltnet.losses import box_regression_loss
from sltnet.model import BoxRegressor
from utils.config import add_common_args, run_cli, save_resolved_config
from utils.data import WSOLDataset, build_transform, load_records
from utils.distributed import cleanup
from utils.engine import Trainer, build_optimizer, setup_run
from utils.errors import DataError
from utils.predictions import read_boxes_csv

STAGE = "regressor_train"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("SLT-Net regressor training from saved pseudo boxes")
    add_common_args(parser)
    add_model_args(parser)
    add_optim_args(parser)
    g = parser.add_argument_group("regressor")
    g.add_argument("--split", type=str, default="train")
    g.add_argument("--localizer-dir", type=str, default=None, help="localizer stage folder")
    g.add_argument("--boxes", type=str, default=None, help="pseudo boxes (default: <localizer-dir>/train/boxes.csv)")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True)
    return parser


def pseudo_box_targets(records, boxes_path) -> torch.Tensor:
    """[N, 4] boxes as fractions of each original image, in record order; every image must have one."""
    boxes, meta = read_boxes_csv(boxes_path, written_by="sltnet/localizer/test.py --split train")
    rows = []
    for record in records:
        if record.image_id not in boxes:
            raise DataError.at(boxes_path, None, f"no box for {record.image_id}: rerun sltnet/localizer/test.py "
                               "with --split train on this dataset")
        rows.append(boxes_to_image_fraction(boxes[record.image_id], meta, boxes_path))
    return torch.tensor(rows, dtype=torch.float32)


def make_regression_loss(targets: torch.Tensor, crop: int, flip: bool):
    def loss_fn(model, batch):
        images = batch["image"]
        target = targets.to(images.device)[batch["index"]]
        images, target = crop_flip_boxes(images, target, crop, flip=flip)
        loss = box_regression_loss(model(images).float(), target)
        return loss, {"loss_reg": loss.item()}
    return loss_fn


def main(args):
    args = resolve_args(args, "regressor")
    ctx = setup_run(args)
    boxes_path = Path(args.boxes) if args.boxes else Path(args.localizer_dir) / "train" / "boxes.csv"

    records = load_records(args.data_root, args.layout, args.split)
    targets = pseudo_box_targets(records, boxes_path)
    dataset = WSOLDataset(records, build_transform("resize", resize=args.resize_size))
    model = BoxRegressor(args.backbone, pretrained=args.pretrained, feature=args.regressor_feature,
                         hidden=args.regressor_hidden, final_relu=args.regressor_final_relu)
    optimizer = build_optimizer(model.parameters(), args)
    if ctx.is_main:
        save_resolved_config(args, args.output_dir)
        print(f"{STAGE}: {len(records)} images, boxes from {boxes_path} -> {args.output_dir}", flush=True)

    trainer = Trainer(model, optimizer, args, ctx, stage_name=STAGE)
    trainer.fit(dataset, make_regression_loss(targets, args.input_size, args.flip))
    cleanup(ctx)
    return args.output_dir


if __name__ == "__main__":
    run_cli(main, get_args_parser, STAGE)
