"""Train the SLT-Net box regressor alone from one localizer's saved pseudo boxes (Table 6's path).

Sec. 4.2 (Table 6): "we choose the localizer with InceptionV3 to generate pseudo boxes for the
ILSVRC2012 dataset and the localizer with VGG16 to generate pseudo boxes for the CUB dataset". The
configs that reproduce Tables 1-4 and 7 take this path: every backbone's regressor learns the
boxes of that one localizer (``pseudo_box_backbone`` in their ``regressor_train`` section), read
from ``sltnet/localizer/test.py --split train`` of it. The joint training of Fig. 2a
(sltnet/localizer/train.py) trains a regressor too; see sltnet/README.md for both.

Targets: the box of boxes.csv as a fraction of the original image, moved with the crop, in pixels
of the crop, divided by m (--box-scale stride, Sec. 3.1; m = the downsampling factor of the
localizer that made the boxes, from boxes.json, unless --box-stride) or by the crop size
(--box-scale input). The resolved scale goes to args.yaml for sltnet/regressor/test.py.

Optimiser: SGD (Sec. 4.1); the regressor's pretrained backbone at --regressor-lr (default --lr), its
newly initialised FC head at that lr x --head-lr-mult (the rule of the joint path). Head: GAP (the
paper's) or, with --regressor-pool grid, an N x N average-pooled grid (not in the paper).

Geometry: each image is resized to --resize-size; a random --input-size crop and a random
horizontal flip are then cut from the batch on the device, and the box moves with the image
(continuous coordinates: shift by the crop offset, clip to the crop, x -> W - x on a flip;
:func:`crop_flip_boxes`). Loss: Smooth-L1 summed over the 4 coordinates of p (Eq. 3-4).
Writes output/sltnet/<dataset>/<backbone>/regressor/{model.pth, checkpoint.pth, log.jsonl, args.yaml}.

    python3 sltnet/localizer/test.py --config configs/sltnet_cub_vgg16.yaml --split train --no-scoremaps --no-maxboxacc
    python3 sltnet/regressor/train.py --config configs/sltnet_cub_resnet50.yaml     # boxes of the VGG16 localizer
    torchrun --nproc_per_node 4 sltnet/regressor/train.py --config configs/sltnet_cub_vgg16.yaml --batch-size 4
    python3 sltnet/regressor/train.py --config configs/sltnet_imagenet_vgg16.yaml \
        --boxes output/sltnet/imagenet/inception_v3/localizer/train/boxes.csv
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by its path (python3 sltnet/regressor/train.py): the repository root first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sltnet.options import regressor_train_parser as get_args_parser
from utils.config import parse_early

# run as a script: --help and bad options are answered before torch loads
ARGS = parse_early(__name__, get_args_parser, "regressor_train")


import torch

from sltnet.boxes import box_divisor, boxes_to_image_fraction, normalize_boxes
from sltnet.losses import box_regression_loss
from sltnet.model import BoxRegressor
from sltnet.options import resolve_defaults
from utils.engine.rundir import run_cli
from utils.data.dataset import WSOLDataset
from utils.data.layouts import load_records
from utils.data.transforms import build_transform
from utils.engine.stage import save_args, start_run
from utils.engine.trainer import Trainer, build_optimizer
from utils.errors import DataError
from utils.evaluation.handoff import read_boxes_csv

STAGE = "regressor_train"


def pseudo_box_targets(records, boxes_path) -> tuple[torch.Tensor, dict]:
    """[N, 4] boxes as fractions of each original image, in record order (every image must have
    one), and the boxes.json metadata."""
    boxes, meta = read_boxes_csv(boxes_path, written_by="sltnet/localizer/test.py --split train")
    rows = []
    for record in records:
        if record.image_id not in boxes:
            raise DataError.at(boxes_path, None, f"no box for {record.image_id}: rerun sltnet/localizer/test.py "
                               "with --split train on this dataset")
        rows.append(boxes_to_image_fraction(boxes[record.image_id], meta, boxes_path))
    return torch.tensor(rows, dtype=torch.float32), meta


def crop_flip_boxes(images: torch.Tensor, boxes: torch.Tensor, crop: int, *, flip: bool = True):
    """Random crop (per image) and horizontal flip of a resized batch, moving the boxes with it.

    ``images`` [B, 3, R, R]; ``boxes`` [B, 4] as fractions of the image. Returns the crops
    [B, 3, crop, crop] and the boxes normalised by the crop size (continuous coordinates: shifted
    by the offset, clipped to the crop, x -> 1 - x on a flip).
    """
    b, _, height, width = images.shape
    ys = torch.randint(0, height - crop + 1, (b,)).tolist()
    xs = torch.randint(0, width - crop + 1, (b,)).tolist()
    flips = (torch.rand(b) < 0.5).tolist() if flip else [False] * b
    scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=boxes.device)
    out_images, out_boxes = [], []
    for i in range(b):
        image = images[i, :, ys[i]:ys[i] + crop, xs[i]:xs[i] + crop]
        offset = torch.tensor([xs[i], ys[i], xs[i], ys[i]], dtype=torch.float32, device=boxes.device)
        box = ((boxes[i].float() * scale - offset).clamp(0, crop)) / crop
        if flips[i]:
            image = image.flip(-1)
            box = torch.stack([1 - box[2], box[1], 1 - box[0], box[3]])
        out_images.append(image)
        out_boxes.append(box)
    return torch.stack(out_images), torch.stack(out_boxes)


def make_regression_loss(targets: torch.Tensor, crop: int, flip: bool, divisor=None):
    """Smooth-L1 (Eq. 3-4) between the prediction and the crop's box in pixels divided by ``divisor``
    (m, or the crop size when None: :func:`sltnet.boxes.box_divisor`)."""
    divisor = crop if divisor is None else divisor

    def loss_fn(model, batch):
        images = batch["image"]
        target = targets.to(images.device)[batch["index"]]
        images, target = crop_flip_boxes(images, target, crop, flip=flip)     # target: fractions of the crop
        target = normalize_boxes(target * crop, divisor)
        loss = box_regression_loss(model(images).float(), target)
        return loss, {"loss_reg": loss.item()}
    return loss_fn


def main(args):
    resolve_defaults(args, "regressor")
    boxes_path = Path(args.boxes) if args.boxes else Path(args.localizer_dir) / "train" / "boxes.csv"
    with start_run(args) as ctx:
        records = load_records(args.data_root, args.layout, args.split)
        targets, meta = pseudo_box_targets(records, boxes_path)
        args.box_scale = args.box_scale or "stride"
        if args.box_scale == "stride" and args.box_stride is None:
            if not meta.get("downsampling_factor"):
                raise DataError.at(Path(boxes_path).with_suffix(".json"), None, "has no downsampling_factor (m of "
                                   "Sec. 3.1): rerun sltnet/localizer/test.py --split train, or pass --box-stride M")
            args.box_stride = float(meta["downsampling_factor"])
        divisor = box_divisor(args.box_scale, args.input_size, args.box_stride)
        dataset = WSOLDataset(records, build_transform("resize", resize=args.resize_size))
        model = BoxRegressor(args.backbone, pretrained=args.pretrained, feature=args.regressor_feature,
                             hidden=args.regressor_hidden, final_relu=args.regressor_final_relu,
                             output_stride=args.output_stride, pool=args.regressor_pool, grid=args.regressor_grid)
        # the pretrained backbone at --regressor-lr (default --lr), the new FC head at that x --head-lr-mult
        optimizer = build_optimizer(model.param_groups(args.lr if args.regressor_lr is None else args.regressor_lr,
                                                       head_lr_mult=args.head_lr_mult), args)
        save_args(args, ctx)  # the options are final: the box scale and m resolved
        if ctx.is_main:
            print(f"{STAGE}: {len(records)} images, boxes from {boxes_path} ({meta.get('backbone', '?')} "
                  f"localizer), box scale {args.box_scale} (divisor {divisor}) -> {args.output_dir}", flush=True)
        trainer = Trainer(model, optimizer, args, ctx, stage_name=STAGE)
        trainer.fit(dataset, make_regression_loss(targets, args.input_size, args.flip, divisor))
    return args.output_dir


if __name__ == "__main__":
    run_cli(main, get_args_parser, STAGE, args=ARGS)
