"""The stand-in pretraining that ships in resource/ (the file configs/demo.yaml's settings name, so
that demo.py reuses it instead of pretraining): present, small enough to ship, the SHA-256 written
beside it, loadable strictly into the demo's backbone and into a classifier."""
import torch

from demo_birds.prepare import pretrain_settings
from demo_birds.settings import get_args_parser, resolve_settings
from network.backbones import build_backbone, build_classifier
from network.pretrain import num_standin_classes, read_info, sha256, weight_path

MAX_BYTES = 25_000_000  # the size limit for a file shipped in resource/: 25 MB


def _shipped():
    settings = resolve_settings(get_args_parser().parse_args([]))
    return settings, pretrain_settings(settings), weight_path(pretrain_settings(settings))


def test_shipped_standin_is_the_demo_file_and_matches_its_hash():
    settings, pre, path = _shipped()
    assert settings["pretrained"] == "standin"
    assert path.is_file(), f"{path} should ship with the repository (made by python3 -m network.pretrain)"
    assert path.stat().st_size <= MAX_BYTES
    info = read_info(path)
    assert info is not None, f"{path.with_suffix('.json')} (command, seed, accuracy, SHA-256) is missing"
    assert info["sha256"] == sha256(path)
    assert info["settings"] == pre  # made with exactly the settings the demo asks for
    assert info["command"].startswith("python3 -m network.pretrain") and f"--steps {pre['steps']}" in info["command"]
    assert 100.0 / num_standin_classes() < info["heldout_top1"] <= 100.0  # above chance


def test_shipped_standin_loads_strictly():
    settings, pre, path = _shipped()
    state = torch.load(path, weights_only=True)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16 if pre["half"] else torch.float32}
    model = build_backbone(settings["backbone"], str(path))  # strict: every key and shape
    assert torch.equal(model.layer4[-1].bn1.running_var, state["layer4.%d.bn1.running_var" % (len(model.layer4) - 1)].float())
    clf = build_classifier(settings["backbone"], num_standin_classes(), str(path))
    clf.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})  # its own head too
