"""network.backbones: feature maps, strides, weight files, checked loading."""
import pytest
import torch
import torchvision

from network import (WEIGHTS, build_backbone, build_classifier, load_imagenet_weights, resnet50_trunk,
                     resnet_trunk, weight_file)
from network.backbones import _rename_legacy_keys
from utils.engine.checkpoint import save_checkpoint
from utils.errors import MissingFileError

torch.set_num_threads(1)

# (name, input size, expected spatial size of each map): strides 4/8/16/32 give 64/stride;
# Inception's unpadded convolutions: 96 -> 47 -> 45 -> 22 -> 20 -> 9 (5d) -> 4 (6e) -> 1 (7c)
CASES = [
    ("vgg16", 64, {"conv3": 16, "conv4": 8, "conv5": 4}),
    ("resnet18", 64, {"layer1": 16, "layer2": 8, "layer3": 4, "layer4": 2}),
    ("resnet50", 64, {"layer1": 16, "layer2": 8, "layer3": 4, "layer4": 2}),
    ("inception_v3", 96, {"mixed_5d": 9, "mixed_6e": 4, "mixed_7c": 1}),
    ("densenet161", 64, {"denseblock1": 16, "denseblock2": 8, "denseblock3": 4, "denseblock4": 2,
                         "features": 2}),
    ("efficientnet_b7", 64, {"stage1": 32, "stage2": 16, "stage3": 8, "stage4": 4, "stage5": 4,
                             "stage6": 2, "stage7": 2, "features": 2}),
]


@pytest.mark.parametrize("name,size,spatial", CASES, ids=[c[0] for c in CASES])
def test_random_backbone_maps(name, size, spatial):
    model = build_backbone(name, pretrained="none").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert list(out) == model.feature_names == list(spatial)
    for key, side in spatial.items():
        assert out[key].shape == (1, model.out_channels[key], side, side), key
        if name != "inception_v3":
            assert size // model.strides[key] == side
    assert not any(k.startswith(("fc.", "classifier.", "AuxLogits.")) for k in model.state_dict())


def test_resnet50_trunk_keys_and_tuple():
    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bkbone = resnet50_trunk("none")

    keys = list(Holder().state_dict())
    assert keys[:2] == ["bkbone.conv1.weight", "bkbone.bn1.weight"]
    assert "bkbone.layer1.0.conv1.weight" in keys and "bkbone.layer4.2.bn3.running_var" in keys
    assert not any(".fc." in k for k in keys)
    assert len(keys) == len(torchvision.models.resnet50().state_dict()) - 2
    with torch.no_grad():
        outs = resnet50_trunk("none").eval()(torch.randn(1, 3, 64, 64))
    assert isinstance(outs, tuple) and [o.shape[1] for o in outs] == [256, 512, 1024, 2048]


def test_missing_weight_file_names_path_and_url(tmp_path):
    for name, files in WEIGHTS.items():
        with pytest.raises(MissingFileError) as info:
            load_imagenet_weights(torch.nn.Linear(1, 1), name, tmp_path)
        msg = str(info.value)
        assert msg.startswith(f"{tmp_path / files[0]} not found: download "
                              f"https://download.pytorch.org/models/{files[0]} and place it there")
        assert msg.endswith("(or pass --pretrained none)")
    with pytest.raises(FileNotFoundError, match="resnet50-0676ba61.pth not found"):
        build_backbone("resnet50", "imagenet", resource_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("alexnet", "none")


@pytest.mark.slow  # builds several full-size ImageNet networks
def test_pretrained_resnet50_loads_legacy_file_exactly(tmp_path):
    torch.manual_seed(3)
    reference = torchvision.models.resnet50()
    # the pre-0.13 file: other name, no BatchNorm num_batches_tracked entries, fp16 here
    sd = {k: v.half() if v.is_floating_point() else v for k, v in reference.state_dict().items()
          if not k.endswith("num_batches_tracked")}
    save_checkpoint(tmp_path / "resnet50-19c8e357.pth", sd)
    assert weight_file("resnet50", tmp_path).name == "resnet50-19c8e357.pth"
    model = build_backbone("resnet50", "imagenet", resource_dir=tmp_path)
    assert torch.equal(model.layer3[2].conv2.weight, reference.layer3[2].conv2.weight.half().float())
    trunk = resnet50_trunk("imagenet", resource_dir=tmp_path)
    assert torch.equal(trunk.conv1.weight, model.conv1.weight)
    clf = build_classifier("resnet50", 7, "imagenet", resource_dir=tmp_path)
    assert clf.fc.out_features == 7
    assert torch.equal(clf.layer1[0].conv1.weight, model.layer1[0].conv1.weight)


def test_wrong_weight_file_is_refused(tmp_path):
    path = tmp_path / "resnet50-0676ba61.pth"
    sd = torchvision.models.resnet50().state_dict()
    sd["layer1.0.conv1.weight"] = torch.zeros(64, 64, 3, 3)
    del sd["layer4.2.bn3.bias"]
    sd["extra.weight"] = torch.zeros(1)
    save_checkpoint(path, sd)
    with pytest.raises(ValueError) as info:
        build_backbone("resnet50", "imagenet", resource_dir=tmp_path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ")
    assert "unexpected keys (1): extra.weight" in msg
    assert "layer1.0.conv1.weight [64, 64, 3, 3] vs model [64, 64, 1, 1]" in msg
    assert "missing keys (1): layer4.2.bn3.bias" in msg


def test_densenet_legacy_keys_are_renamed():
    sd = {"features.denseblock1.denselayer1.norm.1.weight": 1, "features.denseblock1.denselayer1.conv.2.weight": 2,
          "features.norm5.bias": 3}
    assert _rename_legacy_keys("densenet161", sd) == {"features.denseblock1.denselayer1.norm1.weight": 1,
                                                     "features.denseblock1.denselayer1.conv2.weight": 2,
                                                     "features.norm5.bias": 3}
    assert _rename_legacy_keys("resnet50", sd) is sd


@pytest.mark.slow  # builds several full-size ImageNet networks
def test_classifier_heads():
    model = build_classifier("inception_v3", 5, "none")
    assert model.fc.out_features == 5 and model.AuxLogits is None and not model.transform_input
    assert build_classifier("vgg16", 1000, "none").classifier[6].out_features == 1000


# ----------------------------------------------------------------------------- --pretrained PATH
def _save_resnet50_file(path, num_classes=36, seed=5):
    torch.manual_seed(seed)
    reference = torchvision.models.resnet50(num_classes=num_classes)
    save_checkpoint(path, reference.state_dict())
    return reference


@pytest.mark.slow  # builds several full-size ImageNet networks
def test_pretrained_path_loads_every_builder_strictly(tmp_path):
    # a file in torchvision's layout with another head size (e.g. a stand-in pretraining's 36 classes)
    path = tmp_path / "mine.pth"
    reference = _save_resnet50_file(path)
    model = build_backbone("resnet50", str(path))
    assert torch.equal(model.layer4[2].conv3.weight, reference.layer4[2].conv3.weight)
    assert torch.equal(model.bn1.running_mean, reference.bn1.running_mean)
    trunk = resnet50_trunk(path)  # a pathlib.Path works as well
    assert torch.equal(trunk.layer2[0].downsample[0].weight, reference.layer2[0].downsample[0].weight)
    clf = build_classifier("resnet50", 7, str(path))
    assert clf.fc.out_features == 7 and torch.equal(clf.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    # a full checkpoint ({"model": state dict}) is unwrapped
    save_checkpoint(tmp_path / "full.pth", {"model": reference.state_dict(), "epoch": 3})
    assert torch.equal(build_backbone("resnet50", str(tmp_path / "full.pth")).conv1.weight, reference.conv1.weight)


@pytest.mark.slow  # builds several full-size ImageNet networks
def test_pretrained_path_of_another_architecture_is_refused_in_one_line(tmp_path):
    from utils.errors import DataError

    path = tmp_path / "resnet18.pth"
    save_checkpoint(path, torchvision.models.resnet18().state_dict())
    for build in (lambda: build_backbone("resnet50", str(path)), lambda: resnet50_trunk(str(path)),
                  lambda: build_classifier("resnet50", 3, str(path))):
        with pytest.raises(DataError) as info:
            build()
        msg = str(info.value)
        assert "\n" not in msg and msg.startswith(f"{path}: not a resnet50 state dict in torchvision's layout")
        assert "shape mismatches" in msg and "missing keys" in msg
    # an incomplete file is refused too (strict: only the head may be absent)
    sd = torchvision.models.resnet50().state_dict()
    del sd["layer3.1.bn2.weight"]
    save_checkpoint(tmp_path / "partial.pth", sd)
    with pytest.raises(DataError, match=r"missing keys \(1\): layer3.1.bn2.weight"):
        build_backbone("resnet50", str(tmp_path / "partial.pth"))
    with pytest.raises(MissingFileError, match="nowhere.pth not found: --pretrained takes"):
        build_backbone("resnet50", str(tmp_path / "nowhere.pth"))


@pytest.mark.slow
def test_pretrained_path_refused_by_a_stage_with_one_error_line(tmp_path, capsys):
    from spol.cam import train as cam_train
    from utils.engine.rundir import run_cli

    path = tmp_path / "resnet18.pth"
    save_checkpoint(path, torchvision.models.resnet18().state_dict())
    from utils.data.generate import generate_dataset

    root = generate_dataset(tmp_path / "birds", num_classes=2, train_per_class=1, test_per_class=1, image_size=32,
                            seed=0)
    with pytest.raises(SystemExit) as info:
        run_cli(cam_train.main, cam_train.get_args_parser, "cam_train",
                ["--data-root", str(root), "--pretrained", str(path), "--device", "cpu", "--workers", "0",
                 "--output-dir", str(tmp_path / "out"), "--resize-size", "32", "--input-size", "32"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: not a resnet50 state dict")


# ----------------------------------------------------------------------------- ResNet-18
def test_resnet18_widths_and_torchvision_file_name():
    model = build_backbone("resnet18", "none")
    assert model.name == "resnet18"
    assert model.out_channels == {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
    assert WEIGHTS["resnet18"][0] == "resnet18-f37072fd.pth"  # torchvision's file for ResNet18_Weights.IMAGENET1K_V1
    assert build_backbone("resnet50", "none").out_channels["layer4"] == 2048  # per instance, not shared


def test_resnet18_loads_a_torchvision_state_dict_strictly(tmp_path):
    torch.manual_seed(3)
    reference = torchvision.models.resnet18(num_classes=54)
    save_checkpoint(tmp_path / "r18.pth", reference.state_dict())
    model = build_backbone("resnet18", str(tmp_path / "r18.pth"))
    assert torch.equal(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert torch.equal(model.layer2[0].downsample[1].running_var, reference.layer2[0].downsample[1].running_var)
    trunk = resnet_trunk("resnet18", tmp_path / "r18.pth")
    outs = trunk.eval()(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [64, 128, 256, 512]
    clf = build_classifier("resnet18", 6, str(tmp_path / "r18.pth"))
    assert clf.fc.out_features == 6 and torch.equal(clf.conv1.weight, reference.conv1.weight)
    # the ImageNet file under torchvision's name in resource/
    save_checkpoint(tmp_path / "resnet18-f37072fd.pth", torchvision.models.resnet18().state_dict())
    assert build_classifier("resnet18", 1000, "imagenet", resource_dir=tmp_path).fc.out_features == 1000
    # a float16 copy (how a shipped file may be stored) loads into the float32 parameters
    save_checkpoint(tmp_path / "half.pth", {k: v.half() if v.is_floating_point() else v
                                             for k, v in reference.state_dict().items()})
    half = build_backbone("resnet18", str(tmp_path / "half.pth"))
    assert half.conv1.weight.dtype == torch.float32
    assert torch.allclose(half.conv1.weight, reference.conv1.weight, atol=1e-3)


def test_resnet18_file_refused_for_resnet50_and_back_in_one_line(tmp_path):
    from utils.errors import DataError

    save_checkpoint(tmp_path / "r50.pth", torchvision.models.resnet50().state_dict())
    for build in (lambda: build_backbone("resnet18", str(tmp_path / "r50.pth")),
                  lambda: resnet_trunk("resnet18", str(tmp_path / "r50.pth")),
                  lambda: build_classifier("resnet18", 3, str(tmp_path / "r50.pth"))):
        with pytest.raises(DataError) as info:
            build()
        msg = str(info.value)
        assert "\n" not in msg and msg.startswith(f"{tmp_path / 'r50.pth'}: not a resnet18 state dict")
    with pytest.raises(ValueError, match="'vgg16' is not a ResNet"):
        resnet_trunk("vgg16", "none")


# --output-stride: the stride of layer4 (ResNets only); layers past it keep the resolution they get
OUTPUT_STRIDE_STRIDES = {32: {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32},
                         16: {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 16},
                         8: {"layer1": 4, "layer2": 8, "layer3": 8, "layer4": 8}}


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_resnet_output_stride_maps_and_strides(name, output_stride):
    torch.manual_seed(0)
    model = build_backbone(name, "none", output_stride=output_stride).eval()
    assert model.strides == OUTPUT_STRIDE_STRIDES[output_stride]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    for key, stride in model.strides.items():
        assert out[key].shape == (1, model.out_channels[key], 64 // stride, 64 // stride), key
    # no dilation: the strided convs of the kept layers' first blocks are simply stride 1
    assert all(m.dilation == (1, 1) for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    trunk = resnet_trunk(name, "none", output_stride=output_stride).eval()
    assert trunk.strides == model.strides
    with torch.no_grad():
        outs = trunk(torch.randn(1, 3, 64, 64))
    assert [o.shape[-1] for o in outs] == [64 // s for s in OUTPUT_STRIDE_STRIDES[output_stride].values()]
    # the class attribute (the default) is left as torchvision's
    assert type(model).strides == OUTPUT_STRIDE_STRIDES[32]


def test_output_stride_keeps_the_weights_and_the_default_is_torchvision(tmp_path):
    torch.manual_seed(4)
    reference = torchvision.models.resnet18().eval()
    save_checkpoint(tmp_path / "r18.pth", reference.state_dict())
    default = build_backbone("resnet18", str(tmp_path / "r18.pth")).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        r = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        maps = {}
        for layer in ("layer1", "layer2", "layer3", "layer4"):
            r = maps[layer] = getattr(reference, layer)(r)
        out = default(x)
    for layer, value in maps.items():
        assert torch.equal(out[layer], value), layer  # bit-identical at output stride 32
    # a stride-32 state dict loads strictly into a stride-8 network (same shapes) and back
    fine = build_backbone("resnet18", "none", output_stride=8)
    fine.load_state_dict(default.state_dict(), strict=True)
    fine.eval()
    coarse = build_backbone("resnet18", "none")
    coarse.load_state_dict(fine.state_dict(), strict=True)
    with torch.no_grad():
        fine_out, coarse_out = fine(x), coarse.eval()(x)
    assert torch.equal(coarse_out["layer4"], maps["layer4"])
    assert torch.equal(fine_out["layer2"], maps["layer2"])  # before the first changed layer: the same
    assert fine_out["layer4"].shape[-2:] == (8, 8) and maps["layer4"].shape[-2:] == (2, 2)
    # only the strides of layer3.0 / layer4.0 (conv1 and the shortcut) differ
    assert fine.layer3[0].conv1.stride == (1, 1) and fine.layer3[0].downsample[0].stride == (1, 1)
    assert coarse.layer3[0].conv1.stride == (2, 2) and coarse.layer3[0].downsample[0].stride == (2, 2)
    # a weight file given as --pretrained loads at output stride 16 too
    assert torch.equal(build_backbone("resnet18", str(tmp_path / "r18.pth"), output_stride=16).layer4[0].conv1.weight,
                       reference.layer4[0].conv1.weight)


def test_bottleneck_output_stride_unstrides_conv2_and_shortcut():
    model = build_backbone("resnet50", "none", output_stride=16)
    block = model.layer4[0]
    assert (block.conv1.stride, block.conv2.stride, block.downsample[0].stride) == ((1, 1), (1, 1), (1, 1))
    assert model.layer3[0].conv2.stride == (2, 2) and model.layer3[0].downsample[0].stride == (2, 2)


@pytest.mark.parametrize("name", ["vgg16", "inception_v3", "densenet161", "efficientnet_b7"])
def test_output_stride_refused_for_other_backbones(name):
    with pytest.raises(ValueError, match=f"backbone {name} has output stride 32 only"):
        build_backbone(name, "none", output_stride=8)


def test_output_stride_must_be_8_16_or_32():
    with pytest.raises(ValueError, match="must be one of 8, 16, 32"):
        build_backbone("resnet18", "none", output_stride=4)
    with pytest.raises(ValueError, match="must be one of 8, 16, 32"):
        resnet_trunk("resnet50", "none", output_stride=64)
