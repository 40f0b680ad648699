"""What the SLT-Net stage scripts share: options, default paths, the joint loss, test-time helpers.

Stage folders (each with train.py / test.py):
``sltnet/localizer`` (localizer + regressor trained together, Fig. 2a),
``sltnet/regressor`` (optional standalone regressor training from saved pseudo boxes; the final
evaluation), ``sltnet/classifier`` (the separate classifier, Fig. 2b).
Default outputs: ``output/sltnet/<cub|imagenet>/<backbone>/<localizer|regressor|classifier>``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sltnet.boxes import box_divisor, normalize_boxes, pseudo_boxes
from sltnet.losses import box_regression_loss, semantic_tolerance_loss, top_k_cam, select_cams
from sltnet.model import LocalizationBranch
from sltnet.options import add_classifier_stage_args, add_loss_args, add_model_args, add_optim_args  # noqa: F401 (moved)
from sltnet.vst import VSTConfig, transform_batch, vst_loss
from utils.protocol import get_protocol
from utils.errors import DataError
from utils.paths import DATASET_DIR, stage_dir

METHOD = "sltnet"
# Sec. 4.1: VGG16 resize 256 crop 224, InceptionV3 resize 320 crop 299 (ResNet50 / DenseNet161: as VGG16)
GEOMETRY = {"vgg16": (256, 224), "inception_v3": (320, 299), "resnet50": (256, 224), "densenet161": (256, 224)}
DATASET_NAME = {"cub": "cub", "ilsvrc": "imagenet", "metadata": "metadata"}
DEFAULT_DATA_ROOT = {"cub": DATASET_DIR / "CUB_200_2011", "ilsvrc": DATASET_DIR / "ILSVRC2012",
                     "metadata": DATASET_DIR / "CUB_200_2011"}
# the script that writes a stage folder's model.pth
PRODUCER = {"localizer": "sltnet/localizer/train.py", "regressor": "sltnet/regressor/train.py",
            "classifier": "sltnet/classifier/train.py"}


def resolve_args(args: argparse.Namespace, stage: str, *, test_of: str | None = None) -> argparse.Namespace:
    """Fill the defaults derived from other options (paths, per-backbone input geometry).

    Training stages write into ``utils.paths.stage_dir``; a test script (``test_of`` = the stage whose
    folder it reads) writes into ``<that folder>/<split>`` unless --output-dir is given.
    """
    resize, crop = GEOMETRY[args.backbone]
    args.resize_size = args.resize_size or resize
    args.input_size = args.input_size or crop
    args.dataset = args.dataset or DATASET_NAME[args.layout]
    if args.data_root is None:
        args.data_root = str(DEFAULT_DATA_ROOT[args.layout])
    if getattr(args, "pseudo_box_backbone", None) and args.localizer_dir is None:
        # Table 6: the regressor learns the boxes of one backbone's localizer (same dataset)
        args.localizer_dir = str(stage_dir(METHOD, args.dataset, "localizer", backbone=args.pseudo_box_backbone))
    for name in ("localizer_dir", "classifier_dir", "regressor_dir"):
        if hasattr(args, name) and getattr(args, name) is None:
            setattr(args, name, str(stage_dir(METHOD, args.dataset, name.split("_")[0], backbone=args.backbone)))
    if args.output_dir is None:
        if test_of is not None:
            args.output_dir = str(Path(getattr(args, f"{test_of}_dir")) / args.split)
        else:
            args.output_dir = str(stage_dir(METHOD, args.dataset, stage, backbone=args.backbone))
    return args


# ----------------------------------------------------------------------------- model
def build_branch(args, num_classes: int, pretrained: str | None = None) -> LocalizationBranch:
    return LocalizationBranch(args.backbone, num_classes, pretrained=pretrained or args.pretrained,
                              cam_feature=args.cam_feature, extra_conv=args.extra_conv,
                              regressor_feature=args.regressor_feature, regressor_hidden=args.regressor_hidden,
                              regressor_final_relu=args.regressor_final_relu, share_backbone=args.share_backbone)


# ----------------------------------------------------------------------------- maps and the joint loss
def localization_map(cams: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor | None, *,
                     acam: bool, top_k: int) -> torch.Tensor:
    """[B, h, w]: top-K ACAM (Eq. 9) or, with ``acam`` off, the CAM of the ground-truth class."""
    if acam:
        return top_k_cam(cams, logits, top_k)
    if labels is None:
        labels = logits.argmax(dim=1)
    return select_cams(cams, labels)[:, 0]


def make_branch_loss(args, stride: int):
    """loss_fn(model, batch) -> (loss, logs) for utils.engine.Trainer: L_SMT + beta L_VST + w L_REG.

    The regressor's target is the box of the localizer's CURRENT map (Fig. 2a; detached), by
    ``args.box_rule`` at ``args.box_threshold`` of the map's max, divided by m = ``args.box_stride``
    (``--box-scale stride``, Sec. 3.1; default the localizer's ``stride``) or by the input size.
    """
    box_scale = args.box_scale or "stride"
    box_stride = args.box_stride or stride
    vst_cfg = VSTConfig.from_args(args, size_multiple=stride)

    def loss_fn(model, batch):
        images, labels = batch["image"], batch["label"]
        transformed = params = None
        if args.vst:
            transformed, params = transform_batch(images, vst_cfg)
        out = model(images, transformed)
        logits, cams = out["logits"].float(), out["cams"].float()
        if args.smt:
            loss_cls = semantic_tolerance_loss(logits, labels, alpha=args.alpha, k=args.top_k)
        else:
            loss_cls = F.cross_entropy(logits, labels)
        loss, logs = loss_cls, {"loss_cls": loss_cls.item()}
        if args.vst:
            loss_vst = vst_loss(cams, out["cams_t"].float(), params, vst_cfg, logits=logits,
                                labels=labels, k=args.top_k)
            loss = loss + args.beta * loss_vst
            logs["loss_vst"] = loss_vst.item()
        maps = localization_map(cams.detach(), logits.detach(), labels, acam=args.acam, top_k=args.top_k)
        height, width = images.shape[-2:]
        boxes = torch.from_numpy(pseudo_boxes(maps, (height, width), args.box_threshold, args.box_rule))
        target = normalize_boxes(boxes, box_divisor(box_scale, (width, height), box_stride)).to(images.device)
        loss_reg = box_regression_loss(out["boxes"].float(), target)
        loss = loss + args.reg_weight * loss_reg
        logs["loss_reg"] = loss_reg.item()
        logs["acc"] = (logits.argmax(1) == labels).float().mean().item()
        return loss, logs

    return loss_fn


def trained_box_encoding(args, weights_path) -> tuple[str, float | None]:
    """(box scale, m) the regressor in ``weights_path`` was trained with: its folder's args.yaml.

    An explicit ``--box-scale`` / ``--box-stride`` must agree with it (else one error line). An
    args.yaml without ``box_scale`` comes from a run before the scale was an option: such
    regressors were trained on boxes divided by the input size. Without args.yaml the scale (and,
    for ``stride``, m) must be given on the command line.
    """
    import yaml

    path = Path(weights_path).parent / "args.yaml"
    if path.is_file():
        trained = yaml.safe_load(path.read_text()) or {}
        scale = trained.get("box_scale") or "input"
        stride = trained.get("box_stride") if scale == "stride" else None
        if args.box_scale is not None and args.box_scale != scale:
            raise DataError.at(path, None, f"the regressor was trained with box_scale {scale}, this test asks "
                               f"for --box-scale {args.box_scale}: drop the option (or pass --box-scale {scale})")
        if scale == "stride" and args.box_stride is not None and stride is not None \
                and float(args.box_stride) != float(stride):
            raise DataError.at(path, None, f"the regressor was trained with box_stride {stride}, this test asks "
                               f"for --box-stride {args.box_stride}")
        stride = stride if stride is not None else args.box_stride
    else:
        scale, stride = args.box_scale, args.box_stride
        if scale is None:
            raise DataError.at(path, None, "not found, so the regressor's box scale is unknown: pass --box-scale "
                               "stride --box-stride M (as trained) or --box-scale input")
    if scale == "stride" and stride is None:
        raise DataError.at(path, None, "box_scale stride without box_stride: pass --box-stride M (as trained)")
    return scale, (float(stride) if stride is not None else None)


# ----------------------------------------------------------------------------- standalone regressor
def boxes_to_image_fraction(box, meta: dict, path) -> list[float]:
    """A boxes.csv box (protocol input pixels, see its boxes.json) -> fractions of the original image."""
    if not meta or "protocol" not in meta or "input_size" not in meta:
        raise DataError.at(Path(path).with_suffix(".json"), None, "missing or incomplete (needs protocol and "
                           "input_size): rerun sltnet/localizer/test.py, which writes it next to boxes.csv")
    size = int(meta["input_size"])
    protocol = get_protocol(meta["protocol"], size, int(meta.get("resize_size") or size))
    return protocol.to_image_fraction(box)


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


# ----------------------------------------------------------------------------- test helpers
def to_uint8_images(images: torch.Tensor) -> np.ndarray:
    """Normalised [B, 3, H, W] -> uint8 [B, H, W, 3] RGB (for overlays)."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    rgb = (images.detach().float().cpu() * std + mean).clamp(0, 1)
    return (rgb.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
