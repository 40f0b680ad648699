"""SPOL CAM / seg models: stride-8 output shapes, dropout by model.training, and strict loading of
state dicts with exactly the keys and shapes of the four released checkpoints."""
import json
from pathlib import Path

import pytest
import torch

import spol
from spol.model import CAMModel, SegModel
from utils.engine.checkpoint import load_stage_weights

SHAPES_JSON = Path(spol.__file__).resolve().parent / "reference" / "released_state_dict_shapes.json"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _released_shapes():
    return json.loads(SHAPES_JSON.read_text())


def _fake_release(shapes: dict) -> dict:
    """Random tensors with exactly the released keys/shapes; every third one in fp16 (apex O2)."""
    state = {}
    gen = torch.Generator().manual_seed(0)
    for i, (key, shape) in enumerate(shapes.items()):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7, dtype=torch.long)
            continue
        t = torch.rand(shape, generator=gen) + 0.5
        state[key] = t.half() if i % 3 == 0 else t
    return state


def _model_for(entry: str):
    if entry.endswith("-seg"):
        return SegModel(pretrained="none")
    return CAMModel(200 if entry.startswith("cub") else 1000, pretrained="none")


def test_cam_model_outputs_stride8_maps():
    torch.manual_seed(0)
    model = CAMModel(5, pretrained="none").eval()
    x = torch.randn(2, 3, 64, 72)
    with torch.no_grad():
        deep, fused = model(x)
        cam = model.cam(x)
    assert deep.shape == fused.shape == cam.shape == (2, 5, 8, 9)
    assert (cam >= 0).all() and (deep >= 0).all() and (fused >= 0).all()  # ReLU per position (authors')
    assert torch.equal(cam, fused)  # eval mode: no dropout, the same map
    none, single = model(x, single_head=True)
    assert none is None and torch.equal(single, fused)


def test_seg_model_outputs_one_logit_channel_without_relu():
    torch.manual_seed(0)
    model = SegModel(pretrained="none").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1, 8, 8)
    assert (out < 0).any()  # logits: no ReLU on the seg head


def test_dropout_follows_model_training_flag():
    torch.manual_seed(0)
    model = SegModel(pretrained="none")
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)
    model.train()
    model.bkbone.eval()  # keep BN statistics out of the comparison
    for name in ("bn51", "bn41", "bn31", "bn5", "bn4", "bn3"):
        getattr(model, name).eval()
    with torch.no_grad():
        c, d = model(x), model(x)
    assert not torch.equal(c, d)


def test_frozen_stem_is_left_out_of_the_optimiser_but_bn1_still_trains_its_statistics():
    # the authors' ImageNet CAM training: conv1/bn1 only left out of the optimiser, bn1 in train mode
    model = CAMModel(3, pretrained="none", freeze_stem=True).train()
    assert not model.bkbone.conv1.weight.requires_grad and not model.bkbone.bn1.weight.requires_grad
    assert model.bkbone.bn1.training and model.bkbone.layer1.training
    before = model.bkbone.bn1.running_mean.clone()
    model(torch.randn(2, 3, 32, 32), single_head=True)
    assert not torch.equal(before, model.bkbone.bn1.running_mean)
    ids = {id(p) for p in model.backbone_parameters()}
    assert id(model.bkbone.conv1.weight) not in ids and id(model.bkbone.layer4[2].conv3.weight) in ids


@pytest.mark.parametrize("entry", ["cub200-cam", "cub200-seg", "imagenet-cam", "imagenet-seg"])
def test_model_keys_and_shapes_equal_released_checkpoint(entry):
    shapes = _released_shapes()[entry]
    own = {k: list(v.shape) for k, v in _model_for(entry).state_dict().items()}
    assert own == shapes


@pytest.mark.parametrize("entry", ["cub200-cam", "cub200-seg", "imagenet-cam", "imagenet-seg"])
def test_released_state_dict_loads_strictly_as_float32(entry, tmp_path):
    state = _fake_release(_released_shapes()[entry])
    path = tmp_path / "released.pth"
    torch.save(state, path)
    model = load_stage_weights(_model_for(entry), path, None)  # a released file: no stage writes it
    loaded = model.state_dict()
    assert loaded["linear.weight"].dtype == torch.float32
    key16 = next(k for k, v in state.items() if v.dtype == torch.float16)
    assert torch.equal(loaded[key16], state[key16].float())
    assert torch.equal(loaded["bkbone.layer3.0.conv2.weight"], state["bkbone.layer3.0.conv2.weight"].float())


def test_wrong_shape_or_extra_key_fails_naming_the_key(tmp_path):
    state = _fake_release(_released_shapes()["cub200-seg"])
    state["linear.weight"] = torch.zeros(2, 128, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="linear.weight"):
        load_stage_weights(SegModel(pretrained="none"), path, None)
    state = _fake_release(_released_shapes()["cub200-seg"])
    state["fc.weight"] = torch.zeros(3)
    torch.save(state, path)
    with pytest.raises(ValueError, match="fc.weight"):
        load_stage_weights(SegModel(pretrained="none"), path, None)


def test_missing_weight_file_names_the_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model\.pth: not found: run spol/cam/train\.py first"):
        load_stage_weights(SegModel(pretrained="none"), tmp_path / "model.pth", "spol/cam/train.py")


def test_missing_imagenet_backbone_file_is_an_error_not_random_init(tmp_path):
    with pytest.raises(FileNotFoundError, match="resnet50-19c8e357.pth"):
        SegModel(pretrained="imagenet", resource_dir=tmp_path)


def test_resnet18_shallow_x_deep_model_widths_and_shapes(tmp_path):
    import torchvision

    from utils.engine.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = CAMModel(5, pretrained="none", backbone="resnet18").eval()
    widths = {name: getattr(model, name).weight.shape for name in ("fc51", "fc41", "fc31", "fc52", "linear3")}
    assert widths["fc51"][1] == 512 and widths["fc41"][1] == 256 and widths["fc31"][1] == 128
    assert widths["fc52"][0] == 512 and widths["linear3"][1] == 128
    with torch.no_grad():
        deep, fused = model(torch.randn(2, 3, 64, 64))
        assert deep.shape == fused.shape == (2, 5, 8, 8)  # stride 8, as with ResNet-50
        assert SegModel(pretrained="none", backbone="resnet18").eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1, 8, 8)
    # a torchvision ResNet-18 file fills the trunk; the ResNet-50 model refuses it
    reference = torchvision.models.resnet18(num_classes=9)
    save_checkpoint(tmp_path / "r18.pth", reference.state_dict())
    loaded = CAMModel(5, pretrained=str(tmp_path / "r18.pth"), backbone="resnet18")
    assert torch.equal(loaded.bkbone.layer3[1].conv1.weight, reference.layer3[1].conv1.weight)
    with pytest.raises(Exception, match="not a resnet50 state dict"):
        CAMModel(5, pretrained=str(tmp_path / "r18.pth"))
    # a ResNet-18 model.pth does not load into the ResNet-50 model (strict shapes)
    save_checkpoint(tmp_path / "model.pth", model.state_dict())
    with pytest.raises(Exception, match="shape"):
        load_stage_weights(CAMModel(5, pretrained="none"), tmp_path / "model.pth", None)
    load_stage_weights(CAMModel(5, pretrained="none", backbone="resnet18"), tmp_path / "model.pth", None)
    with pytest.raises(ValueError, match="ResNet backbone"):
        CAMModel(5, pretrained="none", backbone="vgg16")


@pytest.mark.parametrize("output_stride,deep_side", [(8, 8), (16, 4), (32, 2)])
def test_output_stride_keeps_out4_out5_at_finer_resolution(monkeypatch, output_stride, deep_side):
    """--output-stride 8: out3, out4, out5 all come at stride 8 from the trunk, none is resized;
    the maps stay at stride 8 (out3's) whatever the output stride."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    interpolate = F.interpolate
    for model in (CAMModel(4, pretrained="none", backbone="resnet18", output_stride=output_stride).eval(),
                  SegModel(pretrained="none", backbone="resnet50", output_stride=output_stride).eval()):
        with torch.no_grad():
            _, out3, out4, out5 = model.bkbone(x)
            out = model(x)
        assert out3.shape[-1] == 8 and out5.shape[-1] == deep_side
        assert out4.shape[-1] == (8 if output_stride == 8 else 4)
        assert (out[1] if isinstance(out, tuple) else out).shape[-2:] == (8, 8)
        resized = []
        monkeypatch.setattr(F, "interpolate", lambda t, **kw: resized.append(t.shape[-1]) or interpolate(t, **kw))
        with torch.no_grad():
            maps = model.features(x)
        monkeypatch.undo()
        assert [m.shape[-2:] for m in maps] == [(8, 8)] * 3
        assert resized == ([] if output_stride == 8 else [deep_side, 4])  # out5, then out4
