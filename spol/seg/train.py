"""SPOL seg stage, training: the class-agnostic segmentation model on the cam stage's pseudo masks.

CUB-200-2011 (8 epochs, batch 128, lr 0.02 everywhere)::

    python3 spol/seg/train.py --config configs/spol_cub.yaml
    torchrun --nproc_per_node 4 spol/seg/train.py --config configs/spol_cub.yaml --batch-size 32

ImageNet-1K (1 epoch)::

    torchrun --nproc_per_node 8 spol/seg/train.py --config configs/spol_imagenet.yaml --batch-size 16

Image and pseudo mask are augmented jointly as the authors do (``utils.data.transforms.SPOLTransform``: the
image normalised then resized 256 x 256 INTER_LINEAR, the mask resized INTER_NEAREST; random crop
224, horizontal flip). Masks written by the authors' own script are read too (their names and
channel layout are ours). Target: ``(fore > 0.25) | (gauss > 0.25)``; ignored pixels:
neither target nor ``fore < 0.01``; loss: weighted BCE with the logits resized to the mask size
(``spol/losses.py``). Reads ``--mask-dir`` (default ``output/spol/<dataset>/cam/pseudo_masks``,
written by ``spol/cam/test.py``); writes ``output/spol/<dataset>/seg/model.pth``, ``checkpoint.pth``,
``log.jsonl``, ``args.yaml``.
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by its path (python3 spol/seg/train.py): the repository root first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from spol.options import seg_train_parser as get_args_parser
from utils.config import parse_early

# run as a script: --help and bad options are answered before torch loads
ARGS = parse_early(__name__, get_args_parser, "seg_train")

import functools

from spol.options import default_path, load_split, resolve_defaults
from spol.losses import TARGET_THRESHOLD, seg_loss
from spol.model import SegModel, drop_last_needed, spol_param_groups
from utils.engine.rundir import run_cli
from utils.data.dataset import WSOLDataset, pseudo_mask_candidates
from utils.data.transforms import build_spol_transform
from utils.engine.trainer import Trainer, build_optimizer
from utils.errors import MissingFileError
from utils.paths import require_output
from utils.engine.stage import save_args, start_run


def seg_loss_fn(model, batch, threshold: float = TARGET_THRESHOLD):
    """``Trainer`` loss: weighted BCE of the foreground logits against the pseudo-mask target
    (foreground: a channel above ``threshold``, ``--target-threshold``)."""
    logits = model(batch["image"])
    return seg_loss(logits.float(), batch["pseudo_mask"], threshold), {}


def check_masks(records, mask_dir: Path, split: str) -> None:
    """Every record has its pseudo mask: fail before training, naming the first missing file."""
    listings: dict[Path, set] = {}

    def exists(path: Path) -> bool:
        if path.parent not in listings:
            listings[path.parent] = set(p.name for p in path.parent.iterdir()) if path.parent.is_dir() else set()
        return path.name in listings[path.parent]

    for r in records:
        candidates = pseudo_mask_candidates(mask_dir, r.image_id)  # ours, then the authors' names
        if not any(exists(path) for path in candidates):
            raise MissingFileError.at(candidates[0], None, "pseudo mask not found: run spol/cam/test.py first "
                                      f"(it writes one per image of split '{split}')")


def main(args):
    resolve_defaults(args, "seg")
    mask_dir = Path(default_path(args.mask_dir, args, "cam", "pseudo_masks"))
    require_output(mask_dir, "spol/cam/test.py")
    with start_run(args) as ctx:
        save_args(args, ctx)
        records = load_split(args, args.split)
        check_masks(records, mask_dir, args.split)
        transform = build_spol_transform("train", resize=args.resize_size, crop=args.input_size, flip=args.flip)
        dataset = WSOLDataset(records, transform, pseudo_mask_dir=mask_dir)
        model = SegModel(pretrained=args.pretrained, backbone=args.backbone, output_stride=args.output_stride)
        optimizer = build_optimizer(spol_param_groups(model, args.lr, args.backbone_lr_mult, args.weight_decay),
                                    args)
        trainer = Trainer(model, optimizer, args, ctx, stage_name="spol_seg",
                          drop_last=drop_last_needed(len(dataset), args.batch_size, ctx.world_size))
        trainer.fit(dataset, functools.partial(seg_loss_fn, threshold=args.target_threshold))
        if ctx.is_main:
            print(f"seg model written to {args.output_dir}/model.pth", flush=True)
    return args.output_dir


if __name__ == "__main__":
    run_cli(main, get_args_parser, "seg_train", args=ARGS)
