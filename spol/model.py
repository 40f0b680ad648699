"""SPOL networks: the multiplicative shallow x deep CAM model and the class-agnostic segmentation model.

Both share one body (Wei et al., CVPR 2021, Sec. 3.1-3.2):

* ``bkbone``: torchvision ResNet-50 without ``fc`` (``network.backbones.resnet_trunk``: module
  names ``conv1, bn1, layer1..layer4``); its layer2/3/4 outputs are ``out3, out4, out5``
  (512/1024/2048 channels, strides 8/16/32). ImageNet weights: ``resource/resnet50-19c8e357.pth``
  (the file the reference used) or torchvision's current ``resnet50-0676ba61.pth``.
  ``backbone="resnet18"`` (not in the paper; the demo's smaller backbone) uses ResNet-18's trunk
  instead: the same layers at the same strides with 128/256/512 channels, every gate and projection
  below sized from those widths (``network.backbones.RESNETS``), the rest unchanged.
* ``output_stride`` 16 or 8 (``--output-stride``; not in the paper, which uses torchvision's 32, the
  default): the trunk's layer4 (16), or layer3 and layer4 (8), downsample no more
  (``network.backbones.ResNetBackbone``), so out5 (and out4) come at stride 16 or 8 with the same
  weights; at 8 every map already has out3's size and none is resized.
* channel gating from global context: ``a_i = relu(bn{i}1(fc{i}1(gap(out_i))))`` for i in 5, 4, 3;
  ``vector = a5 * a4 * a3`` (128-d); ``out_i = sigmoid(fc{i}2(vector)) * out_i``.
* projection: ``out_i = relu(bn{i}(linear{i}(out_i)))`` (128 channels); out5 and out4 are resized
  bilinearly (align_corners=True) to out3's size (stride 8).
* fusion: ``fused = out5 * out4 * out3`` (element-wise: the shallow-feature-aware multiplication).
* head ``linear``: 1x1 conv 128 -> C, fed through dropout p=0.5 while ``self.training``.

The attribute names are exactly those of the released checkpoints (368 keys each, listed with their
shapes in the reference JSON), so a released state dict loads with strict key and shape checking
(``utils.engine.checkpoint.load_stage_weights``).

Outputs (all at stride 8, e.g. 28x28 for a 224x224 input):

* :class:`CAMModel` ``forward(x)`` -> ``(deep, fused)`` class maps ``[B, K, h, w]`` as the authors'
  code computes them: ``deep = relu(linear(dropout(out5)))`` (the CUB loss's ``pred1``),
  ``fused = relu(linear(dropout(out5*out4*out3)))`` (``pred2``), the ReLU applied per position
  BEFORE training averages them spatially to logits (:func:`spol.losses.map_logits`).
  ``forward(x, single_head=True)`` -> ``(None, fused)``: the ImageNet training path, which draws
  dropout for the fused map only (as the authors' ImageNet model does, so that a seeded run draws
  the same dropout mask). ``cam(x)`` -> ``relu(linear(out5*out4*out3))`` at test time.
* :class:`SegModel` ``forward(x)`` -> ``[B, 1, h, w]`` foreground logits (no ReLU).

Training both: :func:`spol_param_groups` (the reference's two SGD groups) and
:func:`drop_last_needed` (a one-image last batch is dropped: the gating BatchNorms cannot train on it).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from network.backbones import RESNETS, resnet_trunk
from utils.paths import RESOURCE_DIR

FEATURE_DIM = 128


def _conv1x1(cin, cout):
    return nn.Conv2d(cin, cout, kernel_size=1, bias=True)


class SPOLNet(nn.Module):
    """The shared body + a 1x1 head with ``num_outputs`` channels (see the module docstring)."""

    def __init__(self, num_outputs: int, *, pretrained: str = "imagenet", freeze_stem: bool = False,
                 dropout: float = 0.5, resource_dir=RESOURCE_DIR, backbone: str = "resnet50",
                 output_stride: int = 32):
        super().__init__()
        if backbone not in RESNETS:
            raise ValueError(f"SPOL's model takes a ResNet backbone ({', '.join(RESNETS)}), got {backbone!r}")
        self.backbone = backbone
        self.output_stride = output_stride
        # "imagenet": resource/ weights, a missing file is an error naming it and its URL
        self.bkbone = resnet_trunk(backbone, pretrained, resource_dir, output_stride=output_stride)
        _, c3, c4, c5 = RESNETS[backbone]  # layer2/3/4 widths: out3, out4, out5
        self.freeze_stem = freeze_stem
        if freeze_stem:
            # the authors' ImageNet CAM training leaves conv1/bn1 out of the optimiser, nothing more:
            # bn1 stays in train mode (batch statistics, running statistics updated) like every BN
            for p in list(self.bkbone.conv1.parameters()) + list(self.bkbone.bn1.parameters()):
                p.requires_grad_(False)
        for i, channels in ((5, c5), (4, c4), (3, c3)):
            setattr(self, f"fc{i}1", _conv1x1(channels, FEATURE_DIM))
            setattr(self, f"bn{i}1", nn.BatchNorm2d(FEATURE_DIM))
            setattr(self, f"fc{i}2", _conv1x1(FEATURE_DIM, channels))
        for i, channels in ((5, c5), (4, c4), (3, c3)):
            setattr(self, f"linear{i}", _conv1x1(channels, FEATURE_DIM))
            setattr(self, f"bn{i}", nn.BatchNorm2d(FEATURE_DIM))
        self.linear = _conv1x1(FEATURE_DIM, num_outputs)
        self.dropout = nn.Dropout(dropout)  # switched by self.training (no "mode" string)
        self._init_head()

    def _init_head(self):
        # reference initialisation of the non-backbone layers
        for name, m in self.named_modules():
            if name.startswith("bkbone"):
                continue
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def head_parameters(self):
        """Every parameter outside ``bkbone`` (the reference trains them at the base lr)."""
        return [p for n, p in self.named_parameters() if not n.startswith("bkbone.")]

    def backbone_parameters(self):
        """Trainable ``bkbone`` parameters (frozen stem excluded)."""
        return [p for p in self.bkbone.parameters() if p.requires_grad]

    def features(self, x):
        """Gated, projected maps ``(out5, out4, out3)``, each ``[B, 128, h, w]`` at stride 8 (out3's)."""
        _, out3, out4, out5 = self.bkbone(x)
        vector = None
        for i, out in ((5, out5), (4, out4), (3, out3)):
            pooled = F.adaptive_avg_pool2d(out, 1)
            a = F.relu(getattr(self, f"bn{i}1")(getattr(self, f"fc{i}1")(pooled)))
            vector = a if vector is None else vector * a
        outs = []
        for i, out in ((5, out5), (4, out4), (3, out3)):
            out = torch.sigmoid(getattr(self, f"fc{i}2")(vector)) * out
            outs.append(F.relu(getattr(self, f"bn{i}")(getattr(self, f"linear{i}")(out))))
        out5, out4, out3 = outs
        size = out3.shape[2:]
        # at output stride 16 or 8 out4 (and out5) may already have out3's size: nothing to resize
        if out5.shape[2:] != size:
            out5 = F.interpolate(out5, size=size, mode="bilinear", align_corners=True)
        if out4.shape[2:] != size:
            out4 = F.interpolate(out4, size=size, mode="bilinear", align_corners=True)
        return out5, out4, out3

    def fused_map(self, x):
        out5, out4, out3 = self.features(x)
        return self.linear(self.dropout(out5 * out4 * out3))


class CAMModel(SPOLNet):
    """Multiplicative shallow x deep CAM model; ``num_classes`` output maps."""

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(num_classes, **kwargs)
        self.num_classes = num_classes

    def forward(self, x, single_head: bool = False):
        """``(deep, fused)`` class maps at stride 8, each ``relu(linear(dropout(.)))`` (``pred1``,
        ``pred2`` of the CUB loss); ``single_head``: ``(None, fused)``, dropout drawn once."""
        out5, out4, out3 = self.features(x)
        deep = None if single_head else F.relu(self.linear(self.dropout(out5)))
        fused = F.relu(self.linear(self.dropout(out5 * out4 * out3)))
        return deep, fused

    def cam(self, x):
        """Class activation maps ``relu(linear(fused))`` ``[B, K, h, w]`` (the head's ReLU)."""
        return F.relu(self.fused_map(x))


class SegModel(SPOLNet):
    """Class-agnostic segmentation model: one foreground-logit map at stride 8, no ReLU."""

    def __init__(self, **kwargs):
        super().__init__(1, **kwargs)

    def forward(self, x):
        return self.fused_map(x)


def spol_param_groups(model, lr: float, backbone_lr_mult: float, weight_decay: float) -> list[dict]:
    """SGD groups of the reference: ``bkbone`` at ``lr * backbone_lr_mult``, the rest at ``lr``
    (frozen parameters are left out)."""
    backbone = model.backbone_parameters()
    head = [p for p in model.head_parameters() if p.requires_grad]
    return [{"params": backbone, "lr": lr * backbone_lr_mult, "weight_decay": weight_decay},
            {"params": head, "lr": lr, "weight_decay": weight_decay}]


def drop_last_needed(num_images: int, batch_size: int, world_size: int) -> bool:
    """True when a rank's last batch would hold ONE image: the gating BatchNorms (``bn51`` ...)
    see one value per channel per image, and BatchNorm cannot train on a single value."""
    per_rank = math.ceil(num_images / world_size)
    return per_rank > batch_size and per_rank % batch_size == 1
