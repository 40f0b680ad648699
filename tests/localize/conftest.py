"""Fixtures of ``python -m localize``'s tests: run folders as each stage's train.py leaves them
(``args.yaml`` of its parser with the stage's derived defaults, ``model.pth`` of the network it
builds), with untrained weights so that no test here trains (the trained runs are in
tests/e2e/test_localize.py), and folders of images in every mode the readers take."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

try:  # `python -m pytest` from the repository root puts the root on sys.path
    from tests.builders import make_tiny_cub
except ImportError:  # plain `pytest`: pytest puts tests/ itself on sys.path
    from builders import make_tiny_cub

GEOMETRY = ["--resize-size", "40", "--input-size", "32"]


def write_run(folder: Path, stage: str, argv: list, data_root: Path, build) -> Path:
    """``folder`` as ``<method>/<stage>/train.py`` leaves it: ``args.yaml`` (its parser's options, resolved
    as the script resolves them) and ``model.pth`` (``build(args)``'s state dict, seeded)."""
    import sltnet.options
    import spol.options
    from utils.config import parse_args, write_config
    from utils.engine.checkpoint import save_checkpoint

    module = spol.options if stage in ("seg", "cam", "cls") else sltnet.options
    argv = [str(a) for a in (*argv, "--data-root", data_root, "--output-dir", folder, "--pretrained", "none",
                             "--device", "cpu", "--workers", "0")]
    args = module.resolve_defaults(parse_args(module.PARSERS[f"{stage}_train"](), argv, stage=f"{stage}_train"),
                                   stage)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_checkpoint(folder / "model.pth", build(args).state_dict())
    write_config(args, folder / "args.yaml")
    return folder


def spol_seg(args):
    from spol.model import SegModel

    return SegModel(pretrained="none", backbone=args.backbone, output_stride=args.output_stride)


def classifier(args, classes: int = 2):
    from network.backbones import build_classifier

    return build_classifier(args.backbone, classes, "none")


def branch(args, classes: int = 2):
    from sltnet.model import build_branch

    return build_branch(args, classes, pretrained="none")


def regressor(args):
    from sltnet.model import BoxRegressor

    return BoxRegressor(args.backbone, pretrained="none", feature=args.regressor_feature,
                        hidden=args.regressor_hidden, final_relu=args.regressor_final_relu,
                        output_stride=args.output_stride, pool=args.regressor_pool, grid=args.regressor_grid)


# what sltnet/localizer/train.py records once its network is built: m, the CAM's stride (ResNet-18 layer3: 16)
SLTNET = ["--backbone", "resnet18", "--cam-feature", "layer3", "--top-k", "1", "--dataset", "tiny", *GEOMETRY,
          "--box-scale", "stride", "--box-stride", "16"]


def run_maker(data_root: Path, root: Path):
    """``make(*names)`` -> {name: folder} of untrained runs of the dataset ``data_root`` (2 classes), in
    the project's output layout under ``root/output`` (each made once):

    ``seg`` (SPOL seg, ResNet-18) and ``cls`` beside it (SPOL cls); ``localizer`` (SLT-Net: SMT, top-1
    ACAM, VST), ``regressor`` (box scale stride, m = 16), ``classifier`` beside them; ``plain_cam`` (an
    SLT-Net localizer with --no-smt --no-acam --no-vst)."""
    spol_dir = root / "output" / "spol" / "cub"
    sltnet_dir = root / "output" / "sltnet" / "tiny" / "resnet18"
    recipes = {
        "seg": (spol_dir / "seg", "seg", ["--backbone", "resnet18", *GEOMETRY], spol_seg),
        "cls": (spol_dir / "cls", "cls", ["--backbone", "resnet18", *GEOMETRY], classifier),
        "localizer": (sltnet_dir / "localizer", "localizer", SLTNET, branch),
        "regressor": (sltnet_dir / "regressor", "regressor",
                      ["--backbone", "resnet18", "--dataset", "tiny", *GEOMETRY, "--box-scale", "stride",
                       "--box-stride", "16", "--regressor-hidden", "8"], regressor),
        "classifier": (sltnet_dir / "classifier", "classifier", ["--backbone", "resnet18", "--dataset", "tiny",
                                                                  *GEOMETRY], classifier),
        "plain_cam": (root / "output" / "cam" / "localizer", "localizer",
                      [*SLTNET, "--no-smt", "--no-acam", "--no-vst"], branch),
    }

    def make(*names):
        out = {}
        for name in names:
            folder, stage, argv, build = recipes[name]
            out[name] = folder if (folder / "model.pth").is_file() else write_run(folder, stage, argv, data_root, build)
        return out

    return make


ALL = ("seg", "cls", "localizer", "regressor", "classifier", "plain_cam")


@pytest.fixture
def make_runs(tiny_cub, tmp_path):
    """:func:`run_maker` of the tiny CUB tree (tests/builders.py) under ``tmp_path``: runs a test may change."""
    return run_maker(tiny_cub, tmp_path)


@pytest.fixture(scope="package")
def made_runs(tmp_path_factory):
    """Every run of :func:`run_maker`, made once (a test must not change them: :func:`make_runs` makes its own)."""
    root = tmp_path_factory.mktemp("runs")
    return run_maker(make_tiny_cub(root / "CUB_200_2011"), root)(*ALL)


def photo_folder(folder: Path) -> dict[str, tuple[int, int]]:
    """Images of every mode and several sizes (and one in a sub-folder); returns name -> (width, height)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sub").mkdir(exist_ok=True)
    images = {
        "wide.jpg": Image.fromarray(rng.integers(0, 255, (30, 80, 3), dtype=np.uint8)),
        "grey.png": Image.fromarray(rng.integers(0, 255, (90, 40), dtype=np.uint8)),
        "rgba.png": Image.fromarray(rng.integers(0, 255, (50, 50, 4), dtype=np.uint8), "RGBA"),
        "sub/palette.png": Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).convert("P"),
        "deep.png": Image.fromarray(rng.integers(0, 65535, (33, 44), dtype=np.uint16)),
    }
    for name, image in images.items():
        image.save(folder / name)
    return {name: image.size for name, image in images.items()}


@pytest.fixture
def photos(tmp_path):
    """A folder of 5 images: RGB JPEG 80x30, grey PNG 40x90, RGBA 50x50, palette 60x40 (in sub/),
    16-bit grey 44x33."""
    folder = tmp_path / "photos"
    photo_folder(folder)
    return folder


@pytest.fixture
def write_photos():
    """``write_photos(folder)``: the images of :func:`photos` into another folder."""
    return photo_folder
