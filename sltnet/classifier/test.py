"""SLT-Net classifier predictions (Fig. 2c: the class comes from the classifier), ten-crop by default.

Writes <classifier dir>/<split>/predictions.csv (utils.evaluation.handoff format, read by
sltnet/regressor/test.py), metrics.json / metrics.txt (Top-1/Top-5 CLS) and test_args.yaml. Ten-crop
(Sec. 4.1): the image is resized to --resize-size and the softmax of its ten --input-size crops is
averaged (utils.engine.classify).

CUB (weights of sltnet/classifier/train.py):
    python3 sltnet/classifier/test.py --config configs/sltnet_cub_vgg16.yaml --data-root dataset/CUB_200_2011
ILSVRC (torchvision's ImageNet weights as they are, from resource/):
    python3 sltnet/classifier/test.py --config configs/sltnet_imagenet_vgg16.yaml --checkpoint pretrained
    torchrun --nproc_per_node 4 sltnet/classifier/test.py --config configs/sltnet_imagenet_vgg16.yaml
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by its path (python3 sltnet/classifier/test.py): the repository root first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sltnet.options import classifier_test_parser as get_args_parser
from utils.config import parse_early

# run as a script: --help and bad options are answered before torch loads
ARGS = parse_early(__name__, get_args_parser, "classifier_test")


from network import build_classifier
from sltnet.options import CLASSIFIER_TEST_INHERITS, CLASSIFIER_TEST_OUTPUTS, PRODUCER, resolve_defaults
from utils.engine.checkpoint import load_stage_weights
from utils.engine.classify import eval_transform, write_classification
from utils.engine.rundir import run_cli
from utils.data.layouts import load_records, num_classes
from utils.engine.stage import save_args, start_run
from utils.evaluation.results import write_metrics
from utils.engine.tensorboard import log_test_step

STAGE = "classifier_test"


def main(args):
    resolve_defaults(args, "classifier")
    with start_run(args, inherit=CLASSIFIER_TEST_INHERITS, outputs=CLASSIFIER_TEST_OUTPUTS) as ctx:
        save_args(args, ctx)
        records = load_records(args.data_root, args.layout, args.split)
        if args.checkpoint == "pretrained":
            model = build_classifier(args.backbone, 1000, "imagenet")
        else:
            model = load_stage_weights(build_classifier(args.backbone, num_classes(records), "none"),
                                       args.checkpoint or Path(args.classifier_dir) / "model.pth",
                                       PRODUCER["classifier"])
        model.to(ctx.device)
        out = Path(args.output_dir)
        result = write_classification(model, records, eval_transform(args), args, ctx, out / "predictions.csv")
        if ctx.is_main:
            metrics = {"split": args.split, "ten_crop": args.ten_crop, **result}
            write_metrics(out / "metrics.json", metrics)
            log_test_step(args, ctx, metrics)
            print(f"{STAGE}: Top-1 CLS {result['top1_cls']:.2f}  Top-5 CLS {result['top5_cls']:.2f} "
                  f"({result['num_images']} images) -> {out / 'predictions.csv'}", flush=True)
    return out


if __name__ == "__main__":
    run_cli(main, get_args_parser, STAGE, args=ARGS)
