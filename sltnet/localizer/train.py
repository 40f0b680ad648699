"""Train the SLT-Net localizer and its box regressor together (Guo et al., CVPR 2021, Fig. 2a).

Loss per batch: L_SMT (Eq. 8) + beta * L_VST (Eq. 10-13) + reg_weight * L_REG (Eq. 3-4), where the
regressor's target is the box of the localizer's current top-K ACAM map (Eq. 9; --teacher-map
acam-label / gt: the top-K ACAM with the label forced in / the label's CAM), by CAM's rule
(--box-rule zhou), divided by the localizer's downsampling factor m (--box-scale stride, Sec. 3.1).
Each component can be switched off (--no-smt, --no-acam, --no-vst): the rows of the paper's Table 5
are configs, see sltnet/README.md. Options that are not the paper's letter (all off by default):
--smt-variant exclude-topk, --vst-bn frozen, --teacher-map acam-label, --regressor-pool grid;
--top-k-ratio sets K from the class count. The configs of Tables 1-4 and 7 then train the regressors they
report alone, on one localizer's boxes (sltnet/regressor/train.py, Table 6). Writes output/sltnet/<cub|imagenet>/<backbone>/localizer/{model.pth, checkpoint.pth,
log.jsonl, args.yaml}; model.pth holds both networks ("localizer.*", "regressor.*").

CUB, VGG16 (Table 1 / Table 5 last column), one GPU:
    python3 sltnet/localizer/train.py --config configs/sltnet_cub_vgg16.yaml --data-root dataset/CUB_200_2011
four GPUs (batch 16 per GPU: pass --batch-size 4 to keep the paper's global batch of 16):
    torchrun --nproc_per_node 4 sltnet/localizer/train.py --config configs/sltnet_cub_vgg16.yaml --batch-size 4
ILSVRC, InceptionV3 (Table 4):
    python3 sltnet/localizer/train.py --config configs/sltnet_imagenet_inception_v3.yaml --data-root dataset/ILSVRC2012
Tiny CPU run on generated data:
    python3 -m sltnet.localizer.train --data-root /tmp/birds --pretrained none --device cpu \
        --epochs 1 --max-steps-per-epoch 2 --batch-size 4 --resize-size 72 --input-size 64 --top-k 2
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by its path (python3 sltnet/localizer/train.py): the repository root first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sltnet.options import localizer_train_parser as get_args_parser
from utils.config import parse_early

# run as a script: --help and bad options are answered before torch loads
ARGS = parse_early(__name__, get_args_parser, "localizer_train")


import torch
import torch.nn.functional as F

from sltnet.boxes import box_divisor, normalize_boxes, pseudo_boxes
from sltnet.losses import box_regression_loss, localization_map, semantic_tolerance_loss
from sltnet.model import build_branch
from sltnet.options import check_top_k, resolve_defaults, resolve_top_k
from sltnet.vst import VSTConfig, transform_batch, vst_loss
from utils.config import explicit_options
from utils.engine.rundir import run_cli
from utils.data.dataset import WSOLDataset
from utils.data.layouts import load_records, num_classes
from utils.data.transforms import build_transform
from utils.engine.stage import save_args, start_run
from utils.engine.trainer import Trainer, build_optimizer

STAGE = "localizer_train"


def make_branch_loss(args, stride: int):
    """loss_fn(model, batch) -> (loss, logs) for utils.engine.trainer.Trainer: L_SMT + beta L_VST + w L_REG.

    The regressor's target is the box of the localizer's CURRENT map (Fig. 2a; detached;
    ``args.teacher_map``, :func:`sltnet.losses.localization_map`), by ``args.box_rule`` at
    ``args.box_threshold`` of the map's max, divided by m = ``args.box_stride`` (``--box-scale
    stride``, Sec. 3.1; default the localizer's ``stride``) or by the input size. The VST copy's
    pass updates the BatchNorm running statistics or not (``args.vst_bn``).
    """
    box_scale = args.box_scale or "stride"
    box_stride = args.box_stride or stride
    vst_cfg = VSTConfig.from_args(args, size_multiple=stride)
    smt_variant = getattr(args, "smt_variant", "eq8")
    teacher = getattr(args, "teacher_map", "acam")
    vst_bn = getattr(args, "vst_bn", "update")

    def loss_fn(model, batch):
        images, labels = batch["image"], batch["label"]
        transformed = params = None
        if args.vst:
            transformed, params = transform_batch(images, vst_cfg)
        out = model(images, transformed, vst_bn=vst_bn)
        logits, cams = out["logits"].float(), out["cams"].float()
        if args.smt:
            loss_cls = semantic_tolerance_loss(logits, labels, alpha=args.alpha, k=args.top_k, variant=smt_variant)
        else:
            loss_cls = F.cross_entropy(logits, labels)
        loss, logs = loss_cls, {"loss_cls": loss_cls.item()}
        if args.vst:
            loss_vst = vst_loss(cams, out["cams_t"].float(), params, vst_cfg, logits=logits,
                                labels=labels, k=args.top_k)
            loss = loss + args.beta * loss_vst
            logs["loss_vst"] = loss_vst.item()
        maps = localization_map(cams.detach(), logits.detach(), labels, acam=args.acam, top_k=args.top_k,
                                teacher=teacher)
        height, width = images.shape[-2:]
        boxes = torch.from_numpy(pseudo_boxes(maps, (height, width), args.box_threshold, args.box_rule))
        target = normalize_boxes(boxes, box_divisor(box_scale, (width, height), box_stride)).to(images.device)
        loss_reg = box_regression_loss(out["boxes"].float(), target)
        loss = loss + args.reg_weight * loss_reg
        logs["loss_reg"] = loss_reg.item()
        logs["acc"] = (logits.argmax(1) == labels).float().mean().item()
        return loss, logs

    return loss_fn


def main(args):
    resolve_defaults(args, "localizer")
    with start_run(args) as ctx:
        records = load_records(args.data_root, args.layout, args.split)
        resolve_top_k(args, num_classes(records), explicit_options(args))   # --top-k-ratio: K of this dataset
        check_top_k(args, num_classes(records))
        dataset = WSOLDataset(records, build_transform("train", resize=args.resize_size, crop=args.input_size,
                                                       flip=args.flip))
        model = build_branch(args, num_classes(records))
        # the regressor's box scale (Sec. 3.1: p = box / m, m the localizer's downsampling factor), recorded
        # in args.yaml so that sltnet/regressor/test.py converts the predictions back the same way
        args.box_scale = args.box_scale or "stride"
        if args.box_scale == "stride" and args.box_stride is None:
            args.box_stride = float(model.localizer.stride)
        optimizer = build_optimizer(model.param_groups(args.lr, regressor_lr=args.regressor_lr,
                                                       head_lr_mult=args.head_lr_mult), args)
        save_args(args, ctx)  # the options are final: K and m resolved
        if ctx.is_main:
            print(f"{STAGE}: {len(records)} images, {num_classes(records)} classes, backbone {args.backbone}, "
                  f"SMT {args.smt} (alpha {args.alpha}, K {args.top_k}, {args.smt_variant}), ACAM {args.acam}, "
                  f"VST {args.vst} (beta {args.beta}, BN {args.vst_bn}), teacher map {args.teacher_map} "
                  f"-> {args.output_dir}", flush=True)
        trainer = Trainer(model, optimizer, args, ctx, stage_name=STAGE)
        trainer.fit(dataset, make_branch_loss(args, model.localizer.stride))
    return args.output_dir


if __name__ == "__main__":
    run_cli(main, get_args_parser, STAGE, args=ARGS)
