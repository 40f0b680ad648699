"""The command line of ``python -m localize``, importable without torch (``--help`` and a bad option
are answered before the heavy imports)."""
from __future__ import annotations

import argparse

from utils.config import stage_parser
from utils.evaluation.protocol import choices as protocol_choices
from utils.options import OUTPUT_STRIDE_BACKBONES, OUTPUT_STRIDES
from utils.ranges import non_negative_int, positive_int, probability

# what a run localizes with (localize.runs.KINDS, which imports nothing heavy either)
KINDS = ("spol", "sltnet-map", "cam", "sltnet-final")


def get_args_parser() -> argparse.ArgumentParser:
    parser = stage_parser("python -m localize", "Localize the objects of your own images with a trained run: "
                                                "boxes.csv, score maps, pictures and predictions.json in --out. "
                                                "Several GPUs: torchrun --nproc_per_node N -m localize -- --run "
                                                "... (the -- keeps torchrun from reading --run as its --run-path)")
    g = parser.add_argument_group("what localizes")
    g.add_argument("--run", type=str, default=None,
                   help="a training run's folder: a SPOL seg run (output/spol/<dataset>/seg), an SLT-Net "
                        "localizer run (its map, or with --kind sltnet-final its joint regressor) or regressor "
                        "run (output/sltnet/<dataset>/<backbone>/regressor); its kind is read from its args.yaml")
    g.add_argument("--checkpoint", type=str, default=None,
                   help="instead of --run: a SPOL seg state dict without a run folder (the authors' released "
                        "files), with --backbone, --dataset and the geometry options below")
    g.add_argument("--kind", type=str, default=None, choices=list(KINDS),
                   help="spol: SPOL's segmentation map; sltnet-map: the SLT-Net localizer's map (top-K ACAM, or "
                        "the predicted class's CAM when it was trained with --no-acam); cam: the predicted "
                        "class's CAM of a localizer run; sltnet-final: the regressor's box and the classifier's "
                        "class (Fig. 2c). Default: the run's own (a localizer run: cam when trained with "
                        "--no-smt --no-acam --no-vst, else sltnet-map)")
    g.add_argument("--classifier-run", type=str, default=None,
                   help="the classifier of the classes: a SPOL cls run (for spol) or an SLT-Net classifier run "
                        "(for sltnet-final, which needs one); default: the run's sibling stage folder (cls/, "
                        "classifier/) when it holds one; 'none': no class (spol)")
    g.add_argument("--threshold", type=probability, default=None,
                   help="box threshold in [0, 1], instead of the run's: SPOL: sigmoid map > T; SLT-Net / CAM: "
                        "the run's --box-rule at T of the map's max (not for sltnet-final)")
    g.add_argument("--protocol", type=str, default="wsol", choices=protocol_choices("resize", "center_crop"),
                   help="the input geometry: wsol (= resize): the whole image resized to the input size; spol "
                        "(= center_crop): resized, then its centre cropped (boxes lie in that crop)")
    c = parser.add_argument_group("--checkpoint only (a run's own come from its args.yaml)")
    c.add_argument("--backbone", type=str, default=None, choices=list(OUTPUT_STRIDE_BACKBONES),
                   help="SPOL's trunk (default resnet50, the released files')")
    c.add_argument("--output-stride", type=int, default=None, choices=list(OUTPUT_STRIDES), help="(default 32)")
    c.add_argument("--dataset", type=str, default=None, choices=["cub", "imagenet"],
                   help="whose fixed threshold: 0.2 (cub) or 0.8 (imagenet), configs/spol_<dataset>.yaml")
    c.add_argument("--input-size", type=positive_int, default=None, help="(default 224)")
    c.add_argument("--resize-size", type=positive_int, default=None,
                   help="resize before the centre crop of --protocol spol (default 256)")
    io = parser.add_argument_group("images and outputs")
    io.add_argument("--images", type=str, required=True,
                    help="folder of JPEG / PNG images, read with its sub-folders (any size; grey, RGBA, palette "
                         "and 16-bit images are converted)")
    io.add_argument("--out", type=str, required=True,
                    help="output folder: new, empty, or one this command wrote (its previous outputs are replaced)")
    d = parser.add_argument_group("device")
    d.add_argument("--device", type=str, default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto = cuda when CUDA is available, else cpu")
    d.add_argument("--batch-size", type=positive_int, default=16, help="images per batch")
    d.add_argument("--amp", type=str, default="off", choices=["off", "bf16", "fp16"],
                   help="mixed precision (torch.autocast)")
    d.add_argument("--workers", type=non_negative_int, default=2, help="data loader worker processes")
    return parser
