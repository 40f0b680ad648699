"""The networks of each kind, built as their runs trained them (the options of ``args.yaml``, the class
count of the weights) and loaded strictly (``utils.engine.checkpoint.load_stage_weights``), and what
each computes on a batch on the device (:class:`Networks`' ``step``).

* ``spol``: :class:`spol.model.SegModel`; the map is the sigmoid of its logits resized bilinearly
  (align_corners=True) to the input size, as spol/seg/test.py saves it.
* ``sltnet-map`` / ``cam``: the localizer of :func:`sltnet.model.build_branch`; the map is
  :func:`sltnet.losses.localization_map` without labels (GT-free): top-K ACAM of the predicted classes
  (Eq. 9) for ``sltnet-map`` of a run trained with ACAM, else the predicted class's CAM; resized
  bilinearly to the input size. The class is the localizer's own top logit.
* ``sltnet-final``: the regressor (its run's, or a localizer run's jointly trained one) gives ``p``,
  turned back into input pixels as it was trained (``p * m`` or ``p * input size``,
  :func:`sltnet.boxes.box_divisor`) and clipped to the input; the class is the classifier run's.
* a classifier run (SPOL cls, SLT-Net classifier) sees its own view of the image: resized to its
  ``--resize-size``; SLT-Net's averages the softmax of ten ``--input-size`` crops, as its test step.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from localize.runs import Run
from utils.engine.checkpoint import load_checkpoint, load_stage_weights, unwrap_state_dict
from utils.errors import DataError


def _num_classes(path, key: str) -> int:
    """The class count of the weights in ``path``: the first dimension of ``key``."""
    state = unwrap_state_dict(load_checkpoint(path))
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    if key not in state or getattr(state[key], "ndim", 0) < 2:
        raise DataError.at(path, None, f"weights do not fit: no classification layer '{key}' (is it a model.pth of "
                           "the stage that wrote the folder?)")
    return int(state[key].shape[0])


def _spol_seg(path, backbone: str, output_stride: int, producer: str | None) -> nn.Module:
    from spol.model import SegModel

    return load_stage_weights(SegModel(pretrained="none", backbone=backbone, output_stride=output_stride),
                              path, producer)


def _branch(run: Run):
    from argparse import Namespace

    from sltnet.model import build_branch

    options = Namespace(**run.options)
    classes = _num_classes(run.weights, "localizer.classifier.weight")
    return load_stage_weights(build_branch(options, classes, pretrained="none"), run.weights,
                              "sltnet/localizer/train.py")


def _regressor(run: Run):
    """``(module, predict)`` of a regressor run, or of a localizer run's jointly trained regressor, loaded
    as sltnet/regressor/test.py loads it: the ``regressor.`` weights of the localizer's model.pth in a
    :class:`sltnet.model.BoxRegressor` of their own, the whole branch when the two share a backbone."""
    from sltnet.model import BoxRegressor

    o = run.options
    if run.stage == "localizer_train" and o.get("share_backbone"):
        return _branch(run), lambda m, x: m(x)["boxes"]
    model = BoxRegressor(o["backbone"], pretrained="none", feature=o.get("regressor_feature"),
                         hidden=o.get("regressor_hidden", 512), final_relu=o.get("regressor_final_relu", True),
                         output_stride=o.get("output_stride", 32), pool=o.get("regressor_pool", "gap"),
                         grid=o.get("regressor_grid", 4))
    producer = "sltnet/localizer/train.py" if run.stage == "localizer_train" else "sltnet/regressor/train.py"
    load_stage_weights(model, run.weights, producer, prefix="regressor.")
    return model, lambda m, x: m(x)


def _classifier(run: Run) -> tuple[nn.Module, int, int, int | None]:
    """``(model, classes, resize, ten-crop size or None)`` of a SPOL cls or SLT-Net classifier run."""
    from network.backbones import build_classifier, classifier_head

    backbone = run.options["backbone"]
    shape = build_classifier(backbone, 2, "none")
    parent, attr = classifier_head(shape, backbone)
    head = next(name for name, module in shape.named_modules() if module is getattr(parent, attr))
    classes = _num_classes(run.weights, f"{head}.weight")
    model = build_classifier(backbone, classes, "none")
    producer = "spol/cls/train.py" if run.stage == "cls_train" else "sltnet/classifier/train.py"
    load_stage_weights(model, run.weights, producer)
    # spol/cls/test.py: the whole resized image; sltnet/classifier/test.py: ten crops (its default)
    ten_crop = run.options.get("input_size") if run.stage == "classifier_train" else None
    return model, classes, int(run.options["resize_size"]), ten_crop


class Networks(nn.Module):
    """Every network of a localizer in one module (one ``.to(device)``, one eval mode), and its step."""

    def __init__(self, kind: str, main: nn.Module, *, input_size: int, predict=None, acam: bool = False,
                 top_k: int = 1, divisor=None, classifier: nn.Module | None = None, ten_crop: int | None = None):
        super().__init__()
        self.kind, self.main, self.input_size = kind, main, input_size
        self.predict, self.acam, self.top_k, self.divisor = predict, acam, top_k, divisor
        self.classifier, self.ten_crop = classifier, ten_crop

    def step(self, batch: dict) -> dict:
        """A batch on the device -> ``{"index", "maps" (raw maps at the input size) or "boxes" (input
        pixels), "probs" (class probabilities) when there are classes}``, tensors on the device."""
        from utils.evaluation.boxes import resize_maps

        out = {"index": torch.as_tensor(batch["index"])}
        images = batch["image"]
        size = (self.input_size, self.input_size)
        if self.kind == "spol":
            logits = F.interpolate(self.main(images).float(), size=size, mode="bilinear", align_corners=True)
            out["maps"] = torch.sigmoid(logits[:, 0])
        elif self.kind in ("sltnet-map", "cam"):
            from sltnet.losses import localization_map

            result = self.main(images)
            cams, logits = result["cams"].float(), result["logits"].float()
            out["maps"] = resize_maps(localization_map(cams, logits, None, acam=self.acam, top_k=self.top_k), size)
            out["probs"] = F.softmax(logits, dim=1)
        else:
            from sltnet.boxes import denormalize_boxes

            p = self.predict(self.main, images).float()
            out["boxes"] = denormalize_boxes(p, self.divisor).clamp(0, self.input_size)
        if self.classifier is not None:
            out["probs"] = self.classify(batch["classifier_image"])
        return out

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities of the classifier's own view (uint8, normalised here as the loop does)."""
        from utils.data.transforms import normalize_images
        from utils.engine.classify import logits_of, ten_crop_views

        images = normalize_images(images)
        if not self.ten_crop:
            return F.softmax(logits_of(self.classifier(images)).float(), dim=1)
        views = ten_crop_views(images, self.ten_crop)
        b, v = views.shape[:2]
        probs = F.softmax(logits_of(self.classifier(views.flatten(0, 1))).float(), dim=1)
        return probs.view(b, v, -1).mean(dim=1)


@dataclass
class Built:
    networks: Networks
    input_size: int
    resize_size: int
    classifier_resize: int | None     # the classifier's view: images resized to it (None: no classifier)
    num_classes: int | None
    network: str                      # in words, for the start line and predictions.json


def build(kind: str, run: Run | None, classifier: Run | None, *, checkpoint=None, backbone=None,
          output_stride=None, input_size=None, resize_size=None) -> Built:
    """The networks of ``kind`` from ``run`` (or a SPOL seg ``checkpoint`` file with the given options) and
    ``classifier``, weights loaded strictly: a file of another network is one ``DataError`` line."""
    o = run.options if run is not None else {}
    size = int(o.get("input_size") or input_size or 224)
    resize = int(o.get("resize_size") or resize_size or 256)
    cls_model, cls_resize, ten_crop, classes = None, None, None, None
    if classifier is not None:
        cls_model, classes, cls_resize, ten_crop = _classifier(classifier)
    if kind == "spol":
        if run is None:
            backbone, output_stride = backbone or "resnet50", output_stride or 32
            main = _spol_seg(checkpoint, backbone, output_stride, None)
            words = f"SPOL seg model ({backbone}, output stride {output_stride}) of {os.fspath(checkpoint)}"
        else:
            main = _spol_seg(run.weights, o["backbone"], o.get("output_stride", 32), "spol/seg/train.py")
            words = f"SPOL seg model ({o['backbone']}, output stride {o.get('output_stride', 32)})"
        networks = Networks(kind, main, input_size=size, classifier=cls_model, ten_crop=ten_crop)
    elif kind in ("sltnet-map", "cam"):
        localizer = _branch(run).localizer
        acam = kind == "sltnet-map" and bool(o.get("acam", True))
        top_k = int(o.get("top_k") or 1)
        classes = int(localizer.classifier.weight.shape[0])
        if acam and top_k > classes:
            raise DataError.at(run.folder / "args.yaml", None, f"top_k {top_k} is larger than the localizer's "
                               f"{classes} classes")
        words = (f"SLT-Net localizer ({o['backbone']}), " + (f"top-{top_k} ACAM of the predicted classes"
                                                             if acam else "the predicted class's CAM"))
        networks = Networks(kind, localizer, input_size=size, acam=acam, top_k=top_k)
    else:
        from sltnet.boxes import box_divisor

        if not o.get("box_scale") or (o["box_scale"] == "stride" and not o.get("box_stride")):
            raise DataError.at(run.folder / "args.yaml", None, "records no box_scale / box_stride: the regressor's "
                               "box encoding is unknown (a run of sltnet/regressor/train.py or "
                               "sltnet/localizer/train.py records it)")
        main, predict = _regressor(run)
        divisor = box_divisor(o["box_scale"], size, o.get("box_stride"))
        words = (f"SLT-Net regressor ({o['backbone']}, {'joint, of the localizer run' if run.stage == 'localizer_train' else 'standalone'}"
                 f", box x {divisor}) and classifier ({classifier.options['backbone']})")
        networks = Networks(kind, main, input_size=size, predict=predict, divisor=divisor,
                            classifier=cls_model, ten_crop=ten_crop)
    return Built(networks, size, resize, cls_resize, classes, words)


__all__ = ["Networks", "Built", "build"]
