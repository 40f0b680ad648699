"""SLT-Net networks: the CAM localizer, the box regressor, and the two trained together (Fig. 2a).

* :class:`CAMLocalizer` -- backbone feature map F (cut at a configurable block), optional extra
  3x3 conv + ReLU, GAP and a linear classifier W (Sec. 3.2). The CAM stack ``M_c = sum_n w_nc F_n``
  (Eq. 7) is computed for all C classes and the logits are ``GAP(M) + b`` (the same numbers as
  ``W . GAP(F) + b``, since GAP and W commute), so one pass gives both.
* :class:`BoxRegressor` -- backbone, GAP, FC-ReLU-FC-ReLU ("two fully connected layers and
  corresponding ReLU layers", Sec. 3.1), 4 outputs: the box ``p = (x1/m, y1/m, x2/m, y2/m)``
  (Sec. 3.1, Eq. 3-4; see :mod:`sltnet.boxes`). ``pool="grid"`` (not in the paper) average-pools
  to an N x N grid and flattens it instead of GAP, so that position survives pooling.
* :class:`LocalizationBranch` -- both networks in one module, so one optimizer (param groups:
  :meth:`LocalizationBranch.param_groups`) and one DDP wrapper train them jointly;
  ``forward(images, transformed=None, vst_bn="update")`` runs the localizer on the images (and on
  the VST-transformed copy; ``vst_bn="frozen"`` keeps that pass from updating the BatchNorm running
  statistics, :func:`batchnorm_statistics_frozen`) and the regressor on the images;
  :func:`build_branch` makes one from a stage's options (``sltnet.options``).

Open choices (configuration values, defaults in :data:`CAM_FEATURE` / :data:`EXTRA_CONV`):
VGG16 keeps conv5_3 (no pool5) and adds one 3x3 conv to 1024 channels before GAP (as in the CAM
literature's VGG16-GAP); InceptionV3 ends at Mixed_6e ("last three blocks removed": Mixed_7a/7b/7c)
followed by the same 3x3 conv to 1024 channels; ResNet50 (layer4) and DenseNet161 (final features)
use their last block as is. ResNet backbones can be built at output stride 16 or 8
(``output_stride``, ``--output-stride``; not in the paper, which uses torchvision's stride 32): both
networks' backbones then keep their last layers at that finer resolution. The regressor shares no weight with the localizer unless
``share_backbone`` (then it reads the localizer's CAM features).
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager, nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from network import build_backbone
from sltnet.options import BACKBONES, REGRESSOR_POOLS, VST_BN  # the names the command line offers

CAM_FEATURE = {"vgg16": "conv5", "inception_v3": "mixed_6e", "resnet18": "layer4", "resnet50": "layer4", "densenet161": "features"}
REGRESSOR_FEATURE = {"vgg16": "conv5", "inception_v3": "mixed_7c", "resnet18": "layer4", "resnet50": "layer4", "densenet161": "features"}
EXTRA_CONV = {"vgg16": 1024, "inception_v3": 1024, "resnet18": 0, "resnet50": 0, "densenet161": 0}


def _drop_blocks_after(backbone: nn.Module, feature: str) -> None:
    """Remove the blocks of a ``network.backbones`` backbone that come after ``feature``.

    network.Backbone has no truncation call; this relies on the layout of its four classes
    (InceptionV3 ``_blocks``, VGG16 ``features`` + ``_taps``, ResNet ``layerN``, DenseNet161
    ``features``). Without it the removed blocks would still run and, holding parameters that
    get no gradient, break DDP (find_unused_parameters=False). Maps after the cut become wrong;
    only ``feature`` is read.
    """
    name = getattr(backbone, "name", "")
    if name == "inception_v3":
        blocks = list(backbone._blocks)
        cut = [b.lower() for b in blocks].index(feature)
        for block in blocks[cut + 1:]:
            delattr(backbone, block)
        backbone._blocks = blocks[:cut + 1]
    elif name == "vgg16":
        last = {v: k for k, v in backbone._taps.items()}[feature]
        backbone.features = backbone.features[:last + 1]
    elif name in ("resnet18", "resnet50"):
        for layer in backbone.feature_names[backbone.feature_names.index(feature) + 1:]:
            setattr(backbone, layer, nn.Identity())
    elif name == "densenet161" and feature != "features":
        children = list(backbone.features.named_children())
        keep = [i for i, (n, _) in enumerate(children) if n == feature][0]
        backbone.features = nn.Sequential(OrderedDict(children[:keep + 1]))


class FeatureExtractor(nn.Module):
    """A backbone cut after ``feature``: forward(x) -> that feature map [B, N, h, w].

    ``output_stride`` (ResNets: 8, 16 or 32, ``network.backbones.ResNetBackbone``) sets the stride
    of the last layers; ``stride`` is that of ``feature`` at it. Blocks after the cut are removed (when the backbone supports it) so that they hold no
    parameters that DDP would see unused.
    """

    def __init__(self, backbone_name: str, feature: str, pretrained: str, output_stride: int = 32):
        super().__init__()
        self.backbone = build_backbone(backbone_name, pretrained=pretrained, output_stride=output_stride)
        if feature not in self.backbone.feature_names:
            raise ValueError(f"backbone {backbone_name} has no feature '{feature}' "
                             f"(choices: {', '.join(self.backbone.feature_names)})")
        truncate = getattr(self.backbone, "truncate", None)
        if callable(truncate):
            truncate(feature)
        else:
            _drop_blocks_after(self.backbone, feature)
        self.feature = feature
        self.out_channels = self.backbone.out_channels[feature]
        self.stride = self.backbone.strides[feature]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)[self.feature]


class CAMLocalizer(nn.Module):
    """CAM network: features -> [3x3 conv + ReLU] -> (GAP, linear) with the CAMs of every class."""

    def __init__(self, backbone_name: str, num_classes: int, *, pretrained: str = "imagenet",
                 feature: str | None = None, extra_conv: int | None = None, output_stride: int = 32):
        super().__init__()
        feature = feature or CAM_FEATURE[backbone_name]
        extra_conv = EXTRA_CONV[backbone_name] if extra_conv is None else extra_conv
        self.features = FeatureExtractor(backbone_name, feature, pretrained, output_stride)
        channels = self.features.out_channels
        if extra_conv > 0:
            self.extra = nn.Sequential(nn.Conv2d(channels, extra_conv, 3, padding=1), nn.ReLU(inplace=True))
            channels = extra_conv
        else:
            self.extra = nn.Identity()
        self.classifier = nn.Linear(channels, num_classes)
        self.stride = self.features.stride
        self.out_channels = channels

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.extra(self.features(x))

    def head(self, feats: torch.Tensor) -> dict:
        """CAM stack (Eq. 7) and logits of a feature map: {"cams": [B, C, h, w], "logits": [B, C]}."""
        cams = torch.einsum("kn,bnhw->bkhw", self.classifier.weight.to(feats.dtype), feats)
        logits = cams.mean(dim=(2, 3)) + self.classifier.bias.to(cams.dtype)
        return {"cams": cams, "logits": logits}

    def forward(self, x: torch.Tensor) -> dict:
        feats = self.forward_features(x)
        out = self.head(feats)
        out["features"] = feats
        return out


@contextmanager
def batchnorm_statistics_frozen(module: nn.Module):
    """Within the block, the BatchNorm layers of ``module`` update no running statistics.

    In train mode each layer still normalises with the batch's own statistics, exactly as
    before; only the update of ``running_mean``, ``running_var`` and ``num_batches_tracked`` is
    left out (``track_running_stats`` off: ``nn.BatchNorm`` then passes no running buffers to
    ``F.batch_norm`` and counts no batch). In eval mode nothing changes (the running statistics
    are read as always). Plain module attributes, so it holds under DDP and autocast.
    """
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in layers:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in layers:
            m.track_running_stats = True


class BoxRegressor(nn.Module):
    """Backbone (or shared features) -> GAP -> FC -> ReLU -> FC -> ReLU -> 4 box coordinates.

    Sec. 3.1: "two fully connected layers and corresponding ReLU layers": a ReLU after each FC
    (the box coordinates are never negative). ``final_relu=False`` makes the output layer linear
    (no ReLU stops the gradient of a coordinate predicted below 0). Boxes are clipped to the
    image when converted back to pixels at test time.

    ``pool``: ``"gap"`` (the paper's global average pooling, one value per channel) or ``"grid"``
    (not in the paper): adaptive average pooling to ``grid`` x ``grid`` cells, flattened channel by
    channel, so that the first FC layer sees where the features are (``channels * grid**2`` inputs;
    ``grid=1`` is GAP). The two heads' first layers differ in shape, so weights of one never load
    into the other.
    """

    def __init__(self, backbone_name: str | None, *, pretrained: str = "imagenet", feature: str | None = None,
                 hidden: int = 512, in_channels: int | None = None, final_relu: bool = True,
                 output_stride: int = 32, pool: str = "gap", grid: int = 4):
        super().__init__()
        if pool not in REGRESSOR_POOLS:
            raise ValueError(f"unknown regressor pooling {pool!r} ({' | '.join(REGRESSOR_POOLS)})")
        if pool == "grid" and int(grid) < 1:
            raise ValueError(f"regressor grid must be >= 1, got {grid}")
        if backbone_name is not None:
            self.features = FeatureExtractor(backbone_name, feature or REGRESSOR_FEATURE[backbone_name], pretrained,
                                             output_stride)
            in_channels = self.features.out_channels
        else:
            self.features = None            # shared: forward receives feature maps
        self.pool, self.grid = pool, int(grid) if pool == "grid" else 1
        layers = [nn.Linear(in_channels * self.grid ** 2, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 4)]
        if final_relu:
            layers.append(nn.ReLU())
        self.fc = nn.Sequential(*layers)

    def pooled(self, feats: torch.Tensor) -> torch.Tensor:
        """[B, N, h, w] -> [B, N] (GAP) or [B, N * grid * grid] (grid cells, channel-major)."""
        if self.pool == "gap":
            return feats.mean(dim=(2, 3))
        return F.adaptive_avg_pool2d(feats, self.grid).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(x) if self.features is not None else x
        return self.fc(self.pooled(feats))

    def param_groups(self, lr: float, *, head_lr_mult: float = 1.0, name: str = "regressor") -> list[dict]:
        """The pretrained backbone at ``lr``, the newly initialised FC head at ``lr * head_lr_mult``
        (groups named ``name`` and ``name + "_head"``; a shared-features regressor has only the head)."""
        groups = [{"params": list(self.features.parameters()) if self.features is not None else [],
                   "lr": lr, "name": name},
                  {"params": list(self.fc.parameters()), "lr": lr * head_lr_mult, "name": f"{name}_head"}]
        return [g for g in groups if g["params"]]


class LocalizationBranch(nn.Module):
    """Localizer + regressor trained together (Fig. 2a).

    forward(images, transformed=None) -> {"logits", "cams", "boxes"} for ``images`` and, when the
    VST copy is given, "logits_t" and "cams_t" for it. "boxes" [B, 4] are the regressor's
    boxes ``p`` (pixels divided by m or by the input size, :mod:`sltnet.boxes`).
    """

    def __init__(self, backbone_name: str, num_classes: int, *, pretrained: str = "imagenet",
                 cam_feature: str | None = None, extra_conv: int | None = None,
                 regressor_feature: str | None = None, regressor_hidden: int = 512,
                 regressor_final_relu: bool = True, share_backbone: bool = False, output_stride: int = 32,
                 regressor_pool: str = "gap", regressor_grid: int = 4):
        super().__init__()
        self.localizer = CAMLocalizer(backbone_name, num_classes, pretrained=pretrained,
                                      feature=cam_feature, extra_conv=extra_conv, output_stride=output_stride)
        self.share_backbone = share_backbone
        head = dict(hidden=regressor_hidden, final_relu=regressor_final_relu, pool=regressor_pool,
                    grid=regressor_grid)
        if share_backbone:
            self.regressor = BoxRegressor(None, in_channels=self.localizer.out_channels, **head)
        else:
            self.regressor = BoxRegressor(backbone_name, pretrained=pretrained, feature=regressor_feature,
                                          output_stride=output_stride, **head)

    def forward(self, images: torch.Tensor, transformed: torch.Tensor | None = None, vst_bn: str = "update") -> dict:
        """``vst_bn``: ``"update"`` (the transformed copy's pass updates the BatchNorm running
        statistics as the original pass does) or ``"frozen"`` (it updates none of them; it still
        normalises with its own batch statistics, so its outputs and gradients are the same)."""
        if vst_bn not in VST_BN:
            raise ValueError(f"unknown vst_bn {vst_bn!r} ({' | '.join(VST_BN)})")
        out = self.localizer(images)
        feats = out.pop("features")
        out["boxes"] = self.regressor(feats if self.share_backbone else images)
        if transformed is not None:
            with batchnorm_statistics_frozen(self.localizer) if vst_bn == "frozen" else nullcontext():
                out_t = self.localizer(transformed)
            out["logits_t"], out["cams_t"] = out_t["logits"], out_t["cams"]
        return out

    def param_groups(self, lr: float, *, regressor_lr: float | None = None, head_lr_mult: float = 1.0) -> list[dict]:
        """Param groups for one optimizer: every pretrained layer at its network's lr, every newly
        initialised layer at that lr x ``head_lr_mult``.

        * ``localizer``: the localizer's backbone, at ``lr``;
        * ``localizer_head``: its new layers (extra conv, classifier), at ``lr * head_lr_mult``;
        * ``regressor``: the regressor's backbone, at ``regressor_lr`` (default ``lr``; absent with a
          shared backbone);
        * ``regressor_head``: its new FC layers, at ``regressor_lr * head_lr_mult``.

        ``head_lr_mult`` is 1.0 by default (the paper names one lr).
        """
        new = list(self.localizer.extra.parameters()) + list(self.localizer.classifier.parameters())
        new_ids = {id(p) for p in new}
        old = [p for p in self.localizer.parameters() if id(p) not in new_ids]
        groups = [{"params": old, "lr": lr, "name": "localizer"},
                  {"params": new, "lr": lr * head_lr_mult, "name": "localizer_head"}]
        groups = [g for g in groups if g["params"]]
        return groups + self.regressor.param_groups(lr if regressor_lr is None else regressor_lr,
                                                    head_lr_mult=head_lr_mult)


def build_branch(args, num_classes: int, pretrained: str | None = None) -> LocalizationBranch:
    """The :class:`LocalizationBranch` a stage's options describe (``pretrained`` overrides --pretrained)."""
    return LocalizationBranch(args.backbone, num_classes, pretrained=pretrained or args.pretrained,
                              cam_feature=args.cam_feature, extra_conv=args.extra_conv,
                              regressor_feature=args.regressor_feature, regressor_hidden=args.regressor_hidden,
                              regressor_final_relu=args.regressor_final_relu, share_backbone=args.share_backbone,
                              output_stride=getattr(args, "output_stride", 32),
                              regressor_pool=getattr(args, "regressor_pool", "gap"),
                              regressor_grid=getattr(args, "regressor_grid", 4))
