"""SPOL cam stage, test step: one pseudo mask per TRAINING image, for the seg stage.

    python3 spol/cam/test.py --config configs/spol_cub.yaml
    torchrun --nproc_per_node 4 spol/cam/test.py --config configs/spol_cub.yaml
    python3 spol/cam/test.py --config configs/spol_imagenet.yaml --checkpoint PATH/TO/released_cam.pth

Each image is resized to 256 x 256 (no crop; the authors' normalise-then-resize,
``utils.data.transforms.SPOLTransform``) and goes through the CAM model in batches on the device; the
ground-truth class's map is max-normalised, resized to 256 x 256 and turned into a pseudo mask on
the CPU (``--mask-workers`` threads) exactly as the authors' script does (``spol/pseudo_mask.py``).
Output, in this stage's output folder (never in the dataset)::

    <output>/pseudo_masks/<image id without extension>.png   lossless PNG, original image size, the
                                                             authors' layout (cv2 order B, G, R):
                                                             B = CAM, G = Gaussian prior, R = 0
    <output>/pseudo_masks.json                               recipe, channel order, image count
    <output>/test_args.yaml                                  this step's options (args.yaml: the training run's)

Switches back to the authors' behaviour: ``--mask-format authors`` writes each mask under the
authors' name (ImageNet: the training image's own ``.JPEG`` name relative to ``train/``, i.e. lossy
JPEG, as their script does); ``--degenerate-contours nan`` lets a degenerate contour make the
Gaussian channel NaN (then 0 after ``np.uint8``) as theirs does, instead of skipping the contour.

Weights: ``--checkpoint`` (default ``<output>/model.pth`` of ``spol/cam/train.py``), a released
SPOL cam state dict or one of ours, loaded strictly (fp16 -> fp32).
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by its path (python3 spol/cam/test.py): the repository root first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from spol.options import cam_test_parser as get_args_parser
from utils.config import parse_early

# run as a script: --help and bad options are answered before torch loads
ARGS = parse_early(__name__, get_args_parser, "cam_test")

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from spol import pseudo_mask as pm
from spol.options import CAM_TEST_INHERITS, CAM_TEST_OUTPUTS, load_split, resolve_defaults
from spol.model import CAMModel
from utils.engine.checkpoint import load_stage_weights
from utils.engine.rundir import run_cli
from utils.data.dataset import WSOLDataset
from utils.data.layouts import num_classes
from utils.data.transforms import build_spol_transform
from utils.engine.distributed import barrier
from utils.engine.inference import run_inference
from utils.io import atomic_save_png, atomic_write, atomic_write_json
from utils.paths import require_output
from utils.engine.stage import save_args, start_run


def cam_step(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch on the device -> ``(dataset indices [B], the ground-truth class's raw CAMs [B, h, w]
    float32)``; :func:`normalized_cams` makes them the authors' step 1 on the host."""
    cams = model.cam(batch["image"])
    labels = torch.as_tensor(batch["label"], device=cams.device)
    return torch.as_tensor(batch["index"]), cams[torch.arange(len(labels), device=cams.device), labels].float()


def normalized_cams(result, work_size: int = pm.WORK_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """:func:`cam_step`'s result -> ``(indices [B], cams [B, S, S] float32 numpy)``: each CAM divided
    by its max (+1e-6) and resized to ``work_size`` with cv2 on the CPU (``spol.pseudo_mask.normalize_cam``,
    the authors' operations)."""
    indices, cams = result
    return indices.cpu().numpy(), pm.normalize_and_resize(cams, work_size).numpy()


def pseudo_mask_path(mask_dir, image_id: str, mask_format: str = "png") -> Path:
    """``png``: ``<id stem>.png``; ``authors``: the SPOL authors' name (CUB ``<id stem>.png``;
    ImageNet training images keep their own name and extension, relative to ``train/``)."""
    if mask_format == "authors" and image_id.startswith("train/"):
        return Path(mask_dir) / image_id[len("train/"):]
    return Path(mask_dir) / (str(Path(image_id).with_suffix("")) + ".png")


def save_mask(path: Path, mask_bgr: np.ndarray) -> None:
    """Write a B, G, R uint8 mask as ``cv2.imwrite`` would (format from the extension), atomically."""
    if path.suffix.lower() == ".png":
        atomic_save_png(path, mask_bgr[:, :, ::-1])  # that writer takes RGB
        return
    import cv2

    ok, data = cv2.imencode(path.suffix, mask_bgr)
    if not ok:
        raise OSError(f"{path}: cv2 cannot encode a mask in this format")
    with atomic_write(path, "wb") as f:
        f.write(data.tobytes())


def write_pseudo_masks(model, records, args, ctx, mask_dir) -> int:
    """This rank's share of the records -> PNG pseudo masks; returns how many it wrote."""
    transform = build_spol_transform("resize", resize=args.resize_size)
    dataset = WSOLDataset(records, transform)

    def save(item):
        index, cam = item
        record = records[int(index)]
        if not np.isfinite(cam).all():  # a NaN map would be cast into a meaningless PNG
            raise FloatingPointError(f"{record.path}: the CAM model gives a non-finite map (its weights have "
                                     "diverged): retrain with spol/cam/train.py, e.g. with a lower --lr")
        mask = pm.pseudo_mask_image(cam, record.size, degenerate=getattr(args, "degenerate_contours", "skip"),
                                    low=args.band[0], high=args.band[1], min_area=args.min_contour_area)
        save_mask(pseudo_mask_path(mask_dir, record.image_id, getattr(args, "mask_format", "png")), mask)

    with ThreadPoolExecutor(max(1, args.mask_workers), thread_name_prefix="pseudo-masks") as pool:
        def consume(result) -> int:
            indices, cams = normalized_cams(result, args.resize_size)
            list(pool.map(save, zip(indices, cams)))
            return len(indices)

        counts = run_inference(model, dataset, cam_step, ctx, batch_size=args.batch_size, workers=args.workers,
                               amp=args.amp, desc="pseudo masks", consume=consume)
    return sum(counts)


def main(args):
    resolve_defaults(args, "cam")
    checkpoint = args.checkpoint or str(Path(args.output_dir) / "model.pth")
    require_output(checkpoint, "spol/cam/train.py")
    with start_run(args, inherit=CAM_TEST_INHERITS, outputs=CAM_TEST_OUTPUTS) as ctx:
        save_args(args, ctx)
        return pseudo_masks(args, ctx, checkpoint)


def pseudo_masks(args, ctx, checkpoint) -> Path:
    """The pseudo masks of ``--split`` by the CAM model in ``checkpoint`` and their recipe
    (``pseudo_masks.json``); returns the masks' folder."""
    records = load_split(args, args.split)
    model = load_stage_weights(CAMModel(num_classes(records), pretrained="none", backbone=args.backbone,
                                        output_stride=args.output_stride), checkpoint, "spol/cam/train.py")
    model.to(ctx.device)
    mask_dir = Path(args.output_dir) / "pseudo_masks"
    write_pseudo_masks(model, records, args, ctx, mask_dir)
    barrier(ctx)
    if ctx.is_main:
        atomic_write_json(Path(args.output_dir) / "pseudo_masks.json", {
            "split": args.split, "num_images": len(records), "checkpoint": str(Path(checkpoint).resolve()),
            "folder": str(mask_dir.resolve()), "format": "PNG (lossless), original image size",
            "channels": {"B": "CAM of the GT class, max-normalised", "G": "Gaussian prior", "R": "zero"},
            "layout": "SPOL authors' (cv2.imwrite of (CAM, Gaussian, 0))", "mask_format": args.mask_format,
            "work_size": args.resize_size, "band": list(args.band), "min_contour_area": args.min_contour_area,
            "variance_divisor": pm.VARIANCE_DIVISOR, "degenerate_contours": args.degenerate_contours})
        print(f"{len(records)} pseudo masks written to {mask_dir}", flush=True)
    return mask_dir


if __name__ == "__main__":
    run_cli(main, get_args_parser, "cam_test", args=ARGS)
