"""utils.engine.checkpoint: safe loading, atomic saving, checked state-dict loading."""
import argparse
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from utils.engine.checkpoint import load_checkpoint, load_state_dict_checked, save_checkpoint
from utils.errors import DataError, MissingFileError


class Tiny(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, classes)


def test_round_trip_with_namespace_and_path(tmp_path):
    model = Tiny()
    state = {"model": model.state_dict(), "epoch": 3, "step": 7, "rng": torch.get_rng_state(),
             "args": argparse.Namespace(lr=0.1, out=Path("/x/y"), ms=(1, 2)), "none": None}
    path = save_checkpoint(tmp_path / "ck" / "checkpoint.pth", state)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and loaded["step"] == 7 and loaded["none"] is None
    assert loaded["args"] == {"lr": 0.1, "out": "/x/y", "ms": (1, 2)}
    assert torch.equal(loaded["rng"], state["rng"])
    for k, v in model.state_dict().items():
        assert torch.equal(loaded["model"][k], v)
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pth"]


def test_other_objects_are_refused_before_writing(tmp_path):
    path = tmp_path / "checkpoint.pth"
    with pytest.raises(TypeError, match=r"state\['extra'\]\[0\].*Tiny"):
        save_checkpoint(path, {"extra": [Tiny()]})
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_failed_save_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, {"epoch": 1})
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"partial bytes")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "x": _Payload(marker)}, path)  # the plain pickle path of torch.save
    with pytest.raises(DataError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: refused to load")
    assert not marker.exists()
    # a raw (non-zip) pickle as well
    raw = tmp_path / "evil_raw.pth"
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(DataError, match="refused to load"):
        load_checkpoint(raw)
    assert not marker.exists()


def test_missing_and_corrupt_files(tmp_path):
    missing = tmp_path / "nope" / "model.pth"
    with pytest.raises(MissingFileError) as info:
        load_checkpoint(missing, producer="spol/cam/train.py")
    assert str(missing) in str(info.value) and "spol/cam/train.py" in str(info.value)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    bad = tmp_path / "truncated.pth"
    save_checkpoint(bad, {"w": torch.ones(1000)})
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(DataError, match="truncated.pth: not a readable"):
        load_checkpoint(bad)


def test_checked_load_strips_prefix_and_casts_half():
    source = Tiny()
    with torch.no_grad():
        for p in source.parameters():
            p.uniform_(-1, 1)
    sd = {"module." + k: (v.half() if v.is_floating_point() else v) for k, v in source.state_dict().items()}
    target = Tiny()
    missing = load_state_dict_checked(target, sd, source="ckpt.pth")
    assert missing == []
    assert target.conv.weight.dtype == torch.float32
    assert torch.equal(target.conv.weight, source.conv.weight.half().float())


def test_checked_load_shape_mismatch_and_unexpected_keys_fail_untouched():
    target = Tiny(classes=3)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    sd = Tiny(classes=5).state_dict()
    sd["head.weight"] = torch.zeros(2)
    with pytest.raises(ValueError) as info:
        load_state_dict_checked(target, sd, source="resource/foo.pth")
    msg = str(info.value)
    assert msg.startswith("resource/foo.pth: ")
    assert "unexpected keys (1): head.weight" in msg
    assert "shape mismatches (2)" in msg and "fc.weight [5, 4] vs model [3, 4]" in msg
    for k, v in target.state_dict().items():  # nothing was loaded
        assert torch.equal(v, before[k])


def test_checked_load_missing_keys_and_globs():
    sd = {k: v for k, v in Tiny().state_dict().items() if not k.startswith("fc.")}
    with pytest.raises(ValueError, match=r"missing keys \(2\): fc.weight, fc.bias"):
        load_state_dict_checked(Tiny(), sd, source="a.pth")
    assert load_state_dict_checked(Tiny(), sd, source="a.pth", allow_missing=["fc.*"]) == ["fc.weight", "fc.bias"]
    # old files lack BatchNorm's num_batches_tracked: filled in, not reported
    del sd["bn.num_batches_tracked"]
    assert load_state_dict_checked(Tiny(), sd, source="a.pth", allow_missing=["fc.weight", "fc.bias"]) \
        == ["fc.weight", "fc.bias"]


def test_checked_load_unwraps_full_checkpoint(tmp_path):
    source = Tiny()
    save_checkpoint(tmp_path / "c.pth", {"model": source.state_dict(), "epoch": 2})
    target = Tiny()
    load_state_dict_checked(target, load_checkpoint(tmp_path / "c.pth"), source="c.pth")
    assert torch.equal(target.fc.weight, source.fc.weight)


def test_load_stage_weights_strict_with_prefix(tmp_path):
    from utils.engine.checkpoint import load_stage_weights

    joint = nn.ModuleDict({"localizer": nn.Linear(3, 2), "regressor": nn.Linear(2, 4)})
    path = tmp_path / "model.pth"
    # a DDP-wrapped training checkpoint of the joint model
    save_checkpoint(path, {"model": {f"module.{k}": v + 1 for k, v in joint.state_dict().items()}})
    part = load_stage_weights(nn.Linear(2, 4), path, "sltnet/localizer/train.py", prefix="regressor.")
    assert torch.equal(part.weight, joint.regressor.weight + 1)
    whole = load_stage_weights(nn.ModuleDict({"localizer": nn.Linear(3, 2), "regressor": nn.Linear(2, 4)}),
                               path, "sltnet/localizer/train.py")
    assert torch.equal(whole.localizer.bias, joint.localizer.bias + 1)
    with pytest.raises(DataError, match=r"model\.pth: weights do not fit Linear: unexpected keys"):
        load_stage_weights(nn.Linear(2, 4), path, "sltnet/localizer/train.py")  # no prefix: refused


def test_a_missing_weight_file_has_the_wording_of_any_missing_output(tmp_path):
    """The same wording for a missing weight file and a missing output of any other kind."""
    from utils.engine.checkpoint import load_stage_weights
    from utils.paths import require_output

    missing = tmp_path / "run" / "model.pth"
    with pytest.raises(MissingFileError) as by_loader:
        load_stage_weights(nn.Linear(2, 4), missing, "spol/cam/train.py")
    with pytest.raises(MissingFileError) as by_check:
        require_output(missing, "spol/cam/train.py")
    assert str(by_loader.value) == str(by_check.value) == (
        f"{missing}: not found: run spol/cam/train.py first (it writes this), or point to the output of a run of it")
    assert require_output(tmp_path, "x.py") == tmp_path  # a folder counts too


def test_stage_dir_of_both_methods():
    from utils.paths import OUTPUT_ROOT, stage_dir

    assert stage_dir("spol", "cub", "cam") == OUTPUT_ROOT / "spol" / "cub" / "cam"
    assert stage_dir("sltnet", "imagenet", "localizer", backbone="vgg16") == \
        OUTPUT_ROOT / "sltnet" / "imagenet" / "vgg16" / "localizer"
