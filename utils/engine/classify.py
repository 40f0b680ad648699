"""The classification stage of both methods (SPOL's cls, SLT-Net's classifier): fine-tuning a
torchvision classifier (:func:`train_classifier`: SGD, the new head at ``--lr``, the rest at ``--lr x
--backbone-lr-mult``, cross entropy) and its predictions, one view or ten crops
(:func:`write_classification` -> ``predictions.csv``). Imports nothing from ``network``.
"""
from __future__ import annotations


import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.data.dataset import WSOLDataset
from utils.engine.trainer import Trainer, build_optimizer
from utils.engine.inference import gather_lists, run_inference
from utils.data.transforms import build_transform
from utils.evaluation.handoff import write_predictions


def final_linear(model: nn.Module) -> nn.Linear:
    """The model's last ``nn.Linear`` in registration order: the head of every torchvision
    classifier (``fc`` registered after ``AuxLogits`` in InceptionV3, ``classifier[-1]`` in VGG16; the
    layer ``network.backbones.classifier_head`` names), a new one when the class count is not 1000.
    ``ValueError`` when the model has none."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear layer to train as the classification head")
    return linears[-1]


def classifier_param_groups(model: nn.Module, head: nn.Module, lr: float, backbone_lr_mult: float,
                            weight_decay: float) -> list[dict]:
    """Two SGD groups: ``head``'s parameters at ``lr``, every other trainable one at
    ``lr * backbone_lr_mult``."""
    head_ids = {id(p) for p in head.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if id(p) in head_ids], "lr": lr, "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) not in head_ids], "lr": lr * backbone_lr_mult,
             "weight_decay": weight_decay}]


class LinearEpochDecay:
    """``lr_lambda(global_step)`` = ``1 - epoch / epochs`` with ``epoch = step // steps_per_epoch``.

    ``steps_per_epoch`` may be set after the scheduler is built (it is the Trainer's to compute);
    until then the multiplier is 1 (the value at step 0 anyway).
    """

    def __init__(self, epochs: int, steps_per_epoch: int | None = None):
        self.epochs, self.steps_per_epoch = int(epochs), steps_per_epoch

    def __call__(self, step: int) -> float:
        if not self.steps_per_epoch:
            return 1.0
        return max(0.0, 1.0 - (step // self.steps_per_epoch) / float(self.epochs))


def logits_of(output) -> torch.Tensor:
    """Logits of a classifier's output: a tensor, Inception/GoogLeNet's named tuple (training), or a
    mapping with ``"logits"`` (a CAM network's output, e.g. SLT-Net's localizer)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return output["logits"]
    if hasattr(output, "logits"):
        return output.logits
    return output[0]


def classification_loss(model, batch):
    """``utils.engine.trainer.Trainer`` loss: cross entropy of the classifier's logits."""
    logits = logits_of(model(batch["image"]))
    loss = F.cross_entropy(logits.float(), batch["label"])
    acc = (logits.argmax(1) == batch["label"]).float().mean()
    return loss, {"ce": float(loss.detach()), "top1": float(acc)}


def ten_crop_views(images: torch.Tensor, crop: int) -> torch.Tensor:
    """``[B, 3, H, W]`` -> ``[B, 10, 3, crop, crop]``: 4 corners + centre, then the same of the
    horizontally flipped images (torchvision ``TenCrop`` order), cut on the device. ``ValueError``
    when ``crop`` exceeds H or W."""
    _, _, h, w = images.shape
    if crop > h or crop > w:
        raise ValueError(f"ten-crop size {crop} larger than the {h}x{w} input")
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    corners = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop), (top, left)]
    views = [images[:, :, y:y + crop, x:x + crop] for y, x in corners]
    flipped = images.flip(3)
    views += [flipped[:, :, y:y + crop, x:x + crop] for y, x in corners]
    return torch.stack(views, dim=1)


def top_k_step(model: nn.Module, batch: dict, *, ten_crop: int | None = None, k: int = 5):
    """One batch on the device -> ``(dataset indices [B], top-k class ids [B, min(k, classes)])``.

    ``ten_crop``: crop size for ten-crop averaging (mean of the softmax over the views), or None
    for one view per image. ``batch["index"]`` keys the rows back to the dataset.
    """
    images = batch["image"]
    if ten_crop:
        views = ten_crop_views(images, ten_crop)
        b, v = views.shape[:2]
        probs = F.softmax(logits_of(model(views.flatten(0, 1))).float(), dim=1)
        probs = probs.view(b, v, -1).mean(dim=1)
    else:
        probs = F.softmax(logits_of(model(images)).float(), dim=1)
    return torch.as_tensor(batch["index"]), probs.topk(min(k, probs.shape[1]), dim=1).indices


def write_classification(model, records, transform, args, ctx, output_path) -> dict:
    """Predict every record (sharded over ranks by ``utils.engine.inference.run_inference``), write
    ``predictions.csv`` on rank 0. Returns {"top1_cls": %, "top5_cls": %, "num_images": N} (the same
    on every rank)."""
    ten_crop = args.input_size if getattr(args, "ten_crop", False) else None
    parts = run_inference(model, WSOLDataset(records, transform),
                          lambda m, batch: top_k_step(m, batch, ten_crop=ten_crop), ctx,
                          batch_size=args.batch_size, workers=args.workers, amp=args.amp, desc="classify",
                          consume=lambda out: (out[0].cpu().numpy(), out[1].cpu().numpy()))
    parts = gather_lists(parts, ctx)
    indices = np.concatenate([p[0] for p in parts]).astype(np.int64) if parts else np.zeros(0, np.int64)
    top5 = np.concatenate([p[1] for p in parts]).astype(np.int64) if parts else np.zeros((0, 5), np.int64)
    order = np.argsort(indices, kind="stable")
    indices, top5 = indices[order], top5[order]
    if len(indices) != len(records) or not np.array_equal(indices, np.arange(len(records))):
        raise RuntimeError(f"predicted {len(indices)} images for {len(records)} records")
    labels = np.asarray([r.label for r in records])
    if ctx.is_main:
        write_predictions(output_path, [r.image_id for r in records], labels, top5)
    return {"top1_cls": float(100.0 * np.mean(top5[:, 0] == labels)),
            "top5_cls": float(100.0 * np.mean((top5 == labels[:, None]).any(axis=1))),
            "num_images": int(len(records))}


def train_transform(args):
    return build_transform("train", resize=args.resize_size, crop=args.input_size, flip=args.flip)


def eval_transform(args):
    """One view: resize (+ centre crop when --input-size); ten-crop: resize only (crops cut on the device).
    The images stay uint8: :func:`write_classification`'s loop normalises them on the batch."""
    if getattr(args, "ten_crop", False):
        if not args.input_size:
            raise ValueError("--ten-crop needs --input-size (the size of the ten crops)")
        return build_transform("resize", resize=args.resize_size, normalize=False)
    if args.input_size:
        return build_transform("center", resize=args.resize_size, crop=args.input_size, normalize=False)
    return build_transform("resize", resize=args.resize_size, normalize=False)


def train_classifier(model: nn.Module, records, args, ctx, *, stage_name: str) -> nn.Module:
    """Fine-tune ``model`` on ``records`` with the options of ``utils.options.add_classifier_args`` (train)
    through ``utils.engine.trainer.Trainer``: cross entropy; ``--lr-schedule linear`` runs epoch e of E
    at ``lr * (1 - e / E)`` (SPOL's cls recipe), ``constant`` keeps the lr. ``output_dir/model.pth``
    holds the final state dict; returns the model."""
    dataset = WSOLDataset(records, train_transform(args))
    groups = classifier_param_groups(model, final_linear(model), args.lr, args.backbone_lr_mult, args.weight_decay)
    optimizer = build_optimizer(groups, args)
    schedule = LinearEpochDecay(args.epochs) if args.lr_schedule == "linear" else None
    trainer = Trainer(model, optimizer, args, ctx, lr_lambda=schedule, stage_name=stage_name)
    if schedule is not None:
        schedule.steps_per_epoch = trainer.steps_per_epoch(len(dataset))
    return trainer.fit(dataset, classification_loss)
