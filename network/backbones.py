"""ImageNet backbones from torchvision with their intermediate feature maps (:func:`build_backbone`:
explicit forward code per family, no hooks; torchvision's module names, so its state dicts line up),
the classifiers of the classification stages (:func:`build_classifier`), and their weights: the
ImageNet files in ``resource/`` (``WEIGHTS``, no download) or any file in torchvision's layout."""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as tvm
from torchvision.models.vgg import cfgs as _vgg_cfgs, make_layers as _vgg_make_layers

from utils.engine.checkpoint import load_checkpoint, load_state_dict_checked, unwrap_state_dict
from utils.errors import DataError, MissingFileError
from utils.paths import RESOURCE_DIR

_URL = "https://download.pytorch.org/models/"
# name -> accepted file names in resource/ (first = torchvision's current file)
WEIGHTS: dict[str, list[str]] = {
    "vgg16": ["vgg16-397923af.pth"],
    "inception_v3": ["inception_v3_google-0cc3c7bd.pth"],
    "resnet18": ["resnet18-f37072fd.pth"],
    # 19c8e357 is the file torchvision shipped before 0.13, used by earlier WSOL code (SPOL)
    "resnet50": ["resnet50-0676ba61.pth", "resnet50-19c8e357.pth"],
    "densenet161": ["densenet161-8d451a50.pth"],
    "efficientnet_b7": ["efficientnet_b7_lukemelas-c5b4e57e.pth"],
}
NAMES = tuple(WEIGHTS)


def weight_url(file_name: str) -> str:
    return _URL + file_name


def _check_name(name: str) -> None:
    if name not in WEIGHTS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(NAMES)}")


def weight_file(name: str, resource_dir: str | os.PathLike = RESOURCE_DIR) -> Path:
    """The ImageNet weight file for ``name``: the first accepted file present, else the expected path."""
    _check_name(name)
    resource_dir = Path(resource_dir)
    for file_name in WEIGHTS[name]:
        if (resource_dir / file_name).is_file():
            return resource_dir / file_name
    return resource_dir / WEIGHTS[name][0]


_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _rename_legacy_keys(name: str, state_dict: dict) -> dict:
    """torchvision's DenseNet files use 'norm.1'-style keys (torchvision renames them the same way)."""
    if not name.startswith("densenet"):
        return state_dict
    out = {}
    for key, value in state_dict.items():
        match = _DENSENET_LEGACY.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return out


def load_imagenet_weights(module: nn.Module, name: str, resource_dir=RESOURCE_DIR,
                          drop_prefixes: tuple[str, ...] = ()) -> Path:
    """Load ``resource/<file of name>`` into ``module`` (checked: every other key must fit)."""
    path = weight_file(name, resource_dir)
    if not path.is_file():
        alternatives = WEIGHTS[name][1:]
        also = f" (also accepted: {', '.join(alternatives)})" if alternatives else ""
        raise MissingFileError(f"{path} not found: download {weight_url(path.name)} and place it there"
                               f"{also} (or pass --pretrained none)")
    state_dict = _rename_legacy_keys(name, load_checkpoint(path))
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(drop_prefixes)}
    load_state_dict_checked(module, state_dict, source=str(path))
    return path


# the classification head of each torchvision network: never taken from a --pretrained PATH file
HEAD_PREFIXES: dict[str, tuple[str, ...]] = {
    "vgg16": ("classifier.6.",), "inception_v3": ("fc.", "AuxLogits."), "resnet18": ("fc.",), "resnet50": ("fc.",),
    "densenet161": ("classifier.",), "efficientnet_b7": ("classifier.1.",),
}


def _check_pretrained(pretrained) -> None:
    if isinstance(pretrained, os.PathLike):
        return
    if not isinstance(pretrained, str) or not pretrained:
        raise ValueError(f"pretrained must be 'imagenet', 'none' or a weight file path, got {pretrained!r}")


def is_weight_path(pretrained) -> bool:
    """True when ``pretrained`` names a file (anything other than 'imagenet' / 'none')."""
    return isinstance(pretrained, os.PathLike) or pretrained not in ("imagenet", "none")


def load_weight_file(module: nn.Module, name: str, path, drop_prefixes: tuple[str, ...] = ()) -> Path:
    """Load a state dict in torchvision's layout for ``name`` from ``path`` into ``module``.

    ``weights_only`` loading (``utils.engine.checkpoint.load_checkpoint``; a full checkpoint's
    ``model`` / ``state_dict`` entry is used); the head (``HEAD_PREFIXES``) and ``drop_prefixes``
    are left out; every other key of ``module`` must be in the file with its shape and the file
    may hold nothing else, else one ``DataError`` line naming the file."""
    _check_name(name)
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"{path} not found: --pretrained takes 'imagenet', 'none' or the path of a "
                               f"state dict in torchvision's {name} layout")
    state_dict = load_checkpoint(path)
    if not isinstance(state_dict, dict):
        raise DataError.at(path, None, f"holds a {type(state_dict).__name__}, not a state dict")
    state_dict = _rename_legacy_keys(name, unwrap_state_dict(state_dict))
    skip = tuple(drop_prefixes) + HEAD_PREFIXES[name]
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(skip)}
    try:
        load_state_dict_checked(module, state_dict, source=str(path),
                                allow_missing=[p + "*" for p in HEAD_PREFIXES[name]])
    except DataError as err:  # one line: which network the file does not fit
        text = str(err).split(": weights do not fit ", 1)[-1]
        raise DataError.at(path, None, f"not a {name} state dict in torchvision's layout "
                                       f"(weights do not fit {text})") from None
    return path


def load_pretrained(module: nn.Module, name: str, pretrained, resource_dir=RESOURCE_DIR,
                    drop_prefixes: tuple[str, ...] = ()) -> Path | None:
    """``pretrained`` = 'imagenet' (resource/ file), 'none' (nothing loaded) or a weight file path."""
    _check_pretrained(pretrained)
    if pretrained == "none":
        return None
    if pretrained == "imagenet":
        return load_imagenet_weights(module, name, resource_dir, drop_prefixes)
    return load_weight_file(module, name, pretrained, drop_prefixes)


class Backbone(nn.Module):
    """A feature extractor: ``forward(x) -> {feature name: map}`` in ``feature_names`` order."""

    name: str = ""
    feature_names: list[str] = []
    out_channels: dict[str, int] = {}
    strides: dict[str, int] = {}
    # keys of the torchvision ImageNet file that the backbone does not have (the heads)
    dropped_prefixes: tuple[str, ...] = ()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class VGG16Backbone(Backbone):
    name = "vgg16"
    feature_names = ["conv3", "conv4", "conv5"]
    out_channels = {"conv3": 256, "conv4": 512, "conv5": 512}
    strides = {"conv3": 4, "conv4": 8, "conv5": 16}
    dropped_prefixes = ("classifier.",)
    _taps = {15: "conv3", 22: "conv4", 29: "conv5"}  # indices of the ReLUs after conv3_3/4_3/5_3

    def __init__(self):
        super().__init__()
        self.features = _vgg_make_layers(_vgg_cfgs["D"], batch_norm=False)
        for m in self.modules():  # torchvision VGG initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        out = {}
        for i, layer in enumerate(self.features):
            if i > 29:  # pool5 is not part of any map
                break
            x = layer(x)
            if i in self._taps:
                out[self._taps[i]] = x
        return out


class ResNetBackbone(Backbone):
    """A torchvision ResNet (``name`` in ``RESNETS``) without ``fc``: layer1..layer4 maps.

    ``output_stride`` (8, 16 or 32, see ``OUTPUT_STRIDES``) is the stride of layer4: 32 is
    torchvision's network; 16 keeps layer4 at layer3's resolution, 8 keeps layer3 and layer4 at
    layer2's. The layers concerned downsample no more: the strided 3x3 conv of their first block
    (BasicBlock ``conv1``, Bottleneck ``conv2``) and its shortcut's 1x1 conv (``downsample.0``) get
    stride 1, with no dilation (what Choe et al.'s wsolevaluation ResNet-50 "large feature map"
    does to layer4; torchvision's ``replace_stride_with_dilation`` is refused by BasicBlock). No
    weight changes shape, so the same state dicts load (strictly) at every output stride.
    """

    feature_names = ["layer1", "layer2", "layer3", "layer4"]
    strides = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
    dropped_prefixes = ("fc.",)

    def __init__(self, name: str = "resnet50", output_stride: int = 32):
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"unknown ResNet {name!r}; choose one of {', '.join(RESNETS)}")
        _check_output_stride(name, output_stride)
        self.name = name
        self.output_stride = output_stride
        self.out_channels = dict(zip(self.feature_names, RESNETS[name]))
        tv = getattr(tvm, name)(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = tv.conv1, tv.bn1, tv.relu, tv.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = tv.layer1, tv.layer2, tv.layer3, tv.layer4
        # the instance's strides (SLT-Net reads strides[feature]: box scale m, VST size multiple)
        self.strides = {layer: min(stride, output_stride) for layer, stride in type(self).strides.items()}
        for layer in ("layer3", "layer4"):
            if type(self).strides[layer] > output_stride:
                _unstride_first_block(getattr(self, layer))

    def _maps(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return c2, c3, c4, c5

    def forward(self, x):
        return dict(zip(self.feature_names, self._maps(x)))


# ResNets of the registry -> output channels of layer1..layer4
RESNETS: dict[str, tuple[int, int, int, int]] = {"resnet18": (64, 128, 256, 512),
                                                  "resnet50": (256, 512, 1024, 2048)}
# the stride of layer4 a ResNet backbone can be built with (32: torchvision's); other backbones: 32 only
OUTPUT_STRIDES = (8, 16, 32)


def _check_output_stride(name: str, output_stride) -> None:
    if output_stride == 32:
        return
    if name not in RESNETS:
        raise ValueError(f"backbone {name} has output stride 32 only (got output stride {output_stride!r}); "
                         f"output strides 8 and 16 are offered by {', '.join(RESNETS)}")
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output stride of {name} must be one of {', '.join(map(str, OUTPUT_STRIDES))}, "
                         f"got {output_stride!r}")


def _unstride_first_block(layer: nn.Sequential) -> None:
    """The first block of a torchvision ResNet layer downsamples no more (stride 1, no dilation)."""
    block = layer[0]
    if isinstance(block, tvm.resnet.Bottleneck):
        block.conv2.stride = (1, 1)
    elif isinstance(block, tvm.resnet.BasicBlock):
        block.conv1.stride = (1, 1)
    else:  # pragma: no cover - torchvision has no other block
        raise TypeError(f"unknown ResNet block {type(block).__name__}")
    if block.downsample is not None:
        block.downsample[0].stride = (1, 1)
    block.stride = 1


class ResNet50Backbone(ResNetBackbone):
    name = "resnet50"
    out_channels = dict(zip(ResNetBackbone.feature_names, RESNETS["resnet50"]))

    def __init__(self, output_stride: int = 32):
        super().__init__("resnet50", output_stride)


class ResNet18Backbone(ResNetBackbone):
    name = "resnet18"
    out_channels = dict(zip(ResNetBackbone.feature_names, RESNETS["resnet18"]))

    def __init__(self, output_stride: int = 32):
        super().__init__("resnet18", output_stride)


class ResNetTrunk(ResNetBackbone):
    """A ResNet without ``fc`` whose forward returns (layer1, layer2, layer3, layer4) outputs.

    Attribute names are torchvision's, so a model holding it as ``bkbone`` has the keys
    ``bkbone.conv1.weight``, ``bkbone.layer1.0.conv1.weight``, ... (SPOL's checkpoints).
    """

    def forward(self, x):
        return self._maps(x)


class ResNet50Trunk(ResNetTrunk):
    """ResNet-50 trunk (SPOL's ``bkbone``)."""

    def __init__(self, output_stride: int = 32):
        super().__init__("resnet50", output_stride)


class InceptionV3Backbone(Backbone):
    name = "inception_v3"
    feature_names = ["mixed_5d", "mixed_6e", "mixed_7c"]
    out_channels = {"mixed_5d": 288, "mixed_6e": 768, "mixed_7c": 2048}
    strides = {"mixed_5d": 8, "mixed_6e": 16, "mixed_7c": 32}
    dropped_prefixes = ("AuxLogits.", "fc.")
    _blocks = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
               "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
               "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]

    def __init__(self, transform_input: bool = False, init_weights: bool = True):
        super().__init__()
        tv = tvm.inception_v3(weights=None, aux_logits=False, init_weights=init_weights,
                              transform_input=transform_input)
        self.transform_input = transform_input
        for block in self._blocks:
            setattr(self, block, getattr(tv, block))

    def forward(self, x):
        if self.transform_input:
            # Google's weights expect inputs in [-1, 1]: map ImageNet-normalised inputs there
            # (torchvision's Inception3._transform_input)
            mean = x.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
            std = x.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
            x = x * (std / 0.5) + (mean - 0.5) / 0.5
        out = {}
        for block in self._blocks:
            x = getattr(self, block)(x)
            if block in ("Mixed_5d", "Mixed_6e", "Mixed_7c"):
                out[block.lower()] = x
        return out


class DenseNet161Backbone(Backbone):
    name = "densenet161"
    feature_names = ["denseblock1", "denseblock2", "denseblock3", "denseblock4", "features"]
    out_channels = {"denseblock1": 384, "denseblock2": 768, "denseblock3": 2112, "denseblock4": 2208,
                    "features": 2208}
    strides = {"denseblock1": 4, "denseblock2": 8, "denseblock3": 16, "denseblock4": 32, "features": 32}
    dropped_prefixes = ("classifier.",)

    def __init__(self):
        super().__init__()
        self.features = tvm.densenet161(weights=None).features

    def forward(self, x):
        out = {}
        for name, layer in self.features.named_children():
            x = layer(x)
            if name.startswith("denseblock"):
                out[name] = x
        out["features"] = F.relu(x)  # after norm5, as torchvision's DenseNet.forward
        return out


class EfficientNetB7Backbone(Backbone):
    name = "efficientnet_b7"
    feature_names = [f"stage{i}" for i in range(1, 8)] + ["features"]
    out_channels = dict(zip(feature_names, [32, 48, 80, 160, 224, 384, 640, 2560]))
    strides = dict(zip(feature_names, [2, 4, 8, 16, 16, 32, 32, 32]))
    dropped_prefixes = ("classifier.",)

    def __init__(self):
        super().__init__()
        self.features = tvm.efficientnet_b7(weights=None).features

    def forward(self, x):
        out = {}
        x = self.features[0](x)  # stem
        for i in range(1, 8):
            x = self.features[i](x)
            out[f"stage{i}"] = x
        out["features"] = self.features[8](x)
        return out


def build_backbone(name: str, pretrained: str = "imagenet", resource_dir=RESOURCE_DIR,
                   output_stride: int = 32) -> Backbone:
    """A ``Backbone`` for ``name`` (see ``NAMES``) whose ``forward(x)`` returns a dict of feature maps.

    ``output_stride`` 16 or 8 (ResNets only, see ``ResNetBackbone``) keeps the last layers at a finer
    resolution; any other backbone given one is a ``ValueError`` naming it.

    ``pretrained`` is ``"imagenet"``, ``"none"`` or the path of a weight file:

    * ``"imagenet"``: ``resource/<torchvision file name>`` (no download, no silent fallback): a
      missing file is an error naming the path and the URL. File names and URLs: ``WEIGHTS``
      and ``resource/README.md``.
    * a path: any state dict in torchvision's layout for the chosen network (the network's own
      ``torchvision.models.<name>().state_dict()`` keys; the classification head, e.g. ``fc.*``,
      may have any size or be absent), e.g. a self-supervised backbone or the demo's stand-in
      pretraining (``network.pretrain``). Loaded with ``weights_only=True`` and checked strictly:
      a file made for another architecture is refused with one line naming it.
    * ``"none"``: random initialisation.

    Feature maps (stride = input pixels per map pixel; a 224x224 input gives 224/stride):

    =============== ==================================================================
    vgg16           conv3 (conv3_3+ReLU, 256 ch, s4), conv4 (conv4_3+ReLU, 512, s8),
                    conv5 (conv5_3+ReLU, 512, s16; pool5 is not applied)
    inception_v3    mixed_5d (288, s8), mixed_6e (768, s16), mixed_7c (2048, s32);
                    unpadded convolutions make the maps slightly smaller than input/stride
    resnet18        layer1 (64, s4), layer2 (128, s8), layer3 (256, s16), layer4 (512, s32);
                    output_stride 16: layer4 s16; output_stride 8: layer3 and layer4 s8
    resnet50        layer1 (256, s4), layer2 (512, s8), layer3 (1024, s16), layer4 (2048, s32);
                    output_stride as resnet18
    densenet161     denseblock1 (384, s4), denseblock2 (768, s8), denseblock3 (2112, s16),
                    denseblock4 (2208, s32), features (ReLU(norm5), 2208, s32)
    efficientnet_b7 stage1..stage7 (32, 48, 80, 160, 224, 384, 640 ch; s2, 4, 8, 16, 16, 32, 32),
                    features (final 1x1 conv, 2560, s32)
    =============== ==================================================================
    """
    _check_name(name)
    _check_pretrained(pretrained)
    _check_output_stride(name, output_stride)
    if name == "inception_v3":
        # with Google's weights the input is remapped as torchvision does; random or a file: plain input
        model = InceptionV3Backbone(transform_input=pretrained == "imagenet", init_weights=pretrained == "none")
    elif name in RESNETS:
        model = {"resnet18": ResNet18Backbone, "resnet50": ResNet50Backbone}[name](output_stride)
    else:
        model = {"vgg16": VGG16Backbone, "densenet161": DenseNet161Backbone,
                 "efficientnet_b7": EfficientNetB7Backbone}[name]()
    load_pretrained(model, name, pretrained, resource_dir, model.dropped_prefixes)
    return model


def resnet_trunk(name: str = "resnet50", pretrained: str = "imagenet", resource_dir=RESOURCE_DIR,
                 output_stride: int = 32) -> ResNetTrunk:
    """A ResNet trunk (conv1, bn1, layer1..layer4; no fc) returning the four layer outputs
    (``output_stride``: the stride of layer4, see ``ResNetBackbone``)."""
    _check_name(name)
    if name not in RESNETS:
        raise ValueError(f"{name!r} is not a ResNet; choose one of {', '.join(RESNETS)}")
    _check_pretrained(pretrained)
    model = ResNetTrunk(name, output_stride)
    load_pretrained(model, name, pretrained, resource_dir, model.dropped_prefixes)
    return model


def resnet50_trunk(pretrained: str = "imagenet", resource_dir=RESOURCE_DIR) -> ResNetTrunk:
    """ResNet-50 trunk (conv1, bn1, layer1..layer4; no fc) returning the four layer outputs."""
    return resnet_trunk("resnet50", pretrained, resource_dir)


def classifier_head(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(parent module, attribute) of the final linear layer of a torchvision classifier."""
    _check_name(name)
    if name == "vgg16":
        return model.classifier, "6"
    if name == "inception_v3" or name in RESNETS:
        return model, "fc"
    if name == "densenet161":
        return model, "classifier"
    return model.classifier, "1"


def build_classifier(name: str, num_classes: int, pretrained: str = "imagenet",
                     resource_dir=RESOURCE_DIR) -> nn.Module:
    """A torchvision classifier; ImageNet weights loaded into the 1000-class model, then a new
    (randomly initialised) head when ``num_classes != 1000``. Inception: no auxiliary head.
    A weight file (``pretrained`` = path) fills everything but the head, which is always new."""
    _check_name(name)
    _check_pretrained(pretrained)
    imagenet = pretrained == "imagenet"
    if is_weight_path(pretrained):
        model = build_classifier(name, num_classes, "none", resource_dir)
        load_weight_file(model, name, pretrained, ("AuxLogits.",) if name == "inception_v3" else ())
        return model
    builder = getattr(tvm, name)
    if name == "inception_v3":
        model = builder(weights=None, num_classes=1000, aux_logits=False, transform_input=imagenet,
                        init_weights=not imagenet)
    else:
        model = builder(weights=None, num_classes=1000)
    if imagenet:
        load_imagenet_weights(model, name, resource_dir, ("AuxLogits.",) if name == "inception_v3" else ())
    if num_classes != 1000:
        parent, attr = classifier_head(model, name)
        old = getattr(parent, attr)
        new = nn.Linear(old.in_features, num_classes)
        # the initialisation torchvision gives each family's head
        if name == "efficientnet_b7":
            init_range = 1.0 / num_classes ** 0.5
            nn.init.uniform_(new.weight, -init_range, init_range)
        elif name == "vgg16":
            nn.init.normal_(new.weight, 0, 0.01)
        elif name == "inception_v3":
            nn.init.trunc_normal_(new.weight, mean=0.0, std=0.1, a=-2, b=2)
        if name not in RESNETS:  # torchvision's ResNets keep nn.Linear's default bias
            nn.init.zeros_(new.bias)
        setattr(parent, attr, new)
    return model
