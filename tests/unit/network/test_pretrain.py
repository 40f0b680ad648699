"""network.pretrain: the stand-in generator is deterministic, its classes are distinct, the file name
encodes the settings, and a short pretraining writes a strictly loadable torchvision state dict."""
import hashlib
import json

import numpy as np
import pytest
import torch

from network import pretrain as P


def test_classes_are_every_shape_colour_texture_combination():
    attrs = {P.class_attributes(k) for k in range(P.num_standin_classes())}
    assert len(attrs) == P.num_standin_classes() == len(P.SHAPES) * len(P.HUES) * len(P.TEXTURES)


def test_batches_are_deterministic_by_seed_and_stream():
    s = dict(P.DEFAULTS)
    x1, y1 = P.standin_batch(0, 0, 5, 3, 32, s)
    x2, y2 = P.standin_batch(0, 0, 5, 3, 32, s)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.shape == (3, 3, 32, 32)
    x3, _ = P.standin_batch(0, 1, 5, 3, 32, s)   # the held-out stream differs
    x4, _ = P.standin_batch(1, 0, 5, 3, 32, s)   # so does another seed
    assert not torch.equal(x1, x3) and not torch.equal(x1, x4)


def test_object_decides_the_class_not_the_background():
    # the same class drawn twice: different backgrounds and poses, same object colour family
    rng = np.random.default_rng(0)
    a = P.render_standin(rng, 0, 64, clutter=0.0, distractors=0.0, object_scale=(0.8, 0.8))
    b = P.render_standin(rng, 0, 64, clutter=0.0, distractors=0.0, object_scale=(0.8, 0.8))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8 and not np.array_equal(a, b)


def test_weight_name_encodes_settings():
    base = P.weight_name(P.DEFAULTS)
    assert base.startswith("standin_resnet50_s64_c54_st300_b64_") and base.endswith("_seed0.pth")
    assert P.weight_name({**P.DEFAULTS, "steps": 10}) != base
    assert P.weight_name({**P.DEFAULTS, "seed": 1}) != base
    assert P.weight_name({**P.DEFAULTS, "object_scale": [0.3, 0.9]}) != base


@pytest.mark.slow  # a short pretraining run
def test_short_pretraining_writes_a_strict_torchvision_state_dict(tmp_path):
    from network.backbones import build_classifier

    settings = dict(size=32, steps=1, batch_size=2, val_images=2)
    path = P.pretrain(settings, resource_dir=tmp_path, progress=False)
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["images_seen"] == 2 and info["classes"] == 54
    clf = build_classifier("resnet50", 4, str(path))
    state = torch.load(path, weights_only=True)
    assert state["fc.weight"].shape == (54, 2048)
    assert torch.equal(clf.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    with pytest.raises(ValueError, match="unknown pretraining setting"):
        P.pretrain({"colour": 1}, resource_dir=tmp_path)


def test_half_pretraining_of_resnet18_writes_float16_that_loads_strictly(tmp_path):
    from network.backbones import build_backbone

    settings = dict(arch="resnet18", size=32, steps=1, batch_size=2, val_images=2, half=True)
    path = P.pretrain(settings, resource_dir=tmp_path, progress=False)
    assert path.name.startswith("standin_resnet18_s32_") and path.name.endswith("_seed0_fp16.pth")
    assert P.weight_name({**P.DEFAULTS, **settings, "half": False}) != path.name
    state = torch.load(path, weights_only=True)
    assert state["layer4.1.conv2.weight"].dtype == torch.float16 and state["fc.weight"].shape == (54, 512)
    assert state["bn1.num_batches_tracked"].dtype == torch.long  # integers stay as they are
    model = build_backbone("resnet18", str(path))  # strict; float16 copied into float32 parameters
    assert model.layer4[1].conv2.weight.dtype == torch.float32
    assert torch.equal(model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"].float())
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["command"].endswith("--half") and info["settings"]["half"] is True
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert P.get_args_parser().parse_args(["--half"]).half and not P.get_args_parser().parse_args([]).half


def test_backbone_option(capsys):
    parser = P.get_args_parser()
    assert parser.parse_args([]).arch == P.DEFAULTS["arch"]
    assert parser.parse_args(["--backbone", "resnet18"]).arch == "resnet18"
    assert "--backbone" in parser.format_help() and "--arch" not in parser.format_help()
    capsys.readouterr()
    with pytest.raises(SystemExit):  # one spelling
        parser.parse_args(["--arch", "resnet34"])
    assert capsys.readouterr().err.startswith("error: unrecognized arguments: --arch resnet34")
