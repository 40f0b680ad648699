"""SPOL cls stage, test step: per-image Top-1/Top-5 of the classifier -> ``predictions.csv``.

CUB-200-2011 (the classifier of ``spol/cls/train.py``, whole image at 685 x 685)::

    python3 spol/cls/test.py --config configs/spol_cub.yaml
    torchrun --nproc_per_node 4 spol/cls/test.py --config configs/spol_cub.yaml

ImageNet-1K (torchvision's pretrained EfficientNet-B7 as it is, no training)::

    python3 spol/cls/test.py --config configs/spol_imagenet.yaml --checkpoint pretrained

Writes, beside the training run in ``output/spol/<dataset>/cls/``, ``predictions.csv``
(``utils/evaluation/handoff.py`` format: image_id, label, pred_top5, top1_correct, top5_correct), read
by ``spol/seg/test.py`` for Top-1/Top-5 Loc, ``metrics.json`` / ``metrics.txt`` (Top-1/Top-5 accuracy)
and ``test_args.yaml``. ``--ten-crop --input-size C`` averages the softmax of ten crops of size C of
the image resized to ``--resize-size``.
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by its path (python3 spol/cls/test.py): the repository root first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from spol.options import cls_test_parser as get_args_parser
from utils.config import parse_early

# run as a script: --help and bad options are answered before torch loads
ARGS = parse_early(__name__, get_args_parser, "cls_test")


from network.backbones import build_classifier
from spol.options import CLS_TEST_INHERITS, CLS_TEST_OUTPUTS, load_split, resolve_defaults
from utils.engine.checkpoint import load_stage_weights
from utils.engine.classify import eval_transform, write_classification
from utils.engine.rundir import run_cli
from utils.data.layouts import num_classes
from utils.engine.stage import save_args, start_run
from utils.evaluation.results import write_metrics
from utils.engine.tensorboard import log_test_step


def load_classifier(args, classes: int):
    """``--checkpoint pretrained``: the ImageNet classifier from resource/ as it is (1000 classes);
    otherwise a state dict (default ``<output>/model.pth`` of spol/cls/train.py), loaded strictly."""
    if args.checkpoint == "pretrained":
        return build_classifier(args.backbone, 1000, "imagenet")
    path = args.checkpoint or str(Path(args.output_dir) / "model.pth")
    return load_stage_weights(build_classifier(args.backbone, classes, "none"), path, "spol/cls/train.py")


def main(args):
    resolve_defaults(args, "cls")
    with start_run(args, inherit=CLS_TEST_INHERITS, outputs=CLS_TEST_OUTPUTS) as ctx:
        save_args(args, ctx)
        records = load_split(args, args.split)
        model = load_classifier(args, num_classes(records)).to(ctx.device)
        path = Path(args.output_dir) / "predictions.csv"
        stats = write_classification(model, records, eval_transform(args), args, ctx, path)
        if ctx.is_main:
            metrics = {"split": args.split, "ten_crop": args.ten_crop, **stats}
            write_metrics(Path(args.output_dir) / "metrics.json", metrics)
            log_test_step(args, ctx, metrics)
            print(f"Top-1 {stats['top1_cls']:.2f}  Top-5 {stats['top5_cls']:.2f}  ({stats['num_images']} images) "
                  f"-> {path}", flush=True)
    return path


if __name__ == "__main__":
    run_cli(main, get_args_parser, "cls_test", args=ARGS)
