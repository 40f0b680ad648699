"""utils.io: atomic writes replace the target only on success and leave no temporary file."""
import json

import cv2
import numpy as np
import pytest

from utils.io import atomic_save_npy, atomic_save_png, atomic_write, atomic_write_json, atomic_write_text


def test_writer_raising_midway_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "scores.bin"
    target.write_bytes(b"old content")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(target) as f:
            f.write(b"half of the new")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.bin"]


def test_writer_raising_without_old_file_creates_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(tmp_path / "new.txt", "w") as f:
            f.write("abc")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_success_replaces_target_and_creates_parents(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    atomic_write_text(target, "first\n")
    atomic_write_text(target, "second\n")
    assert target.read_text() == "second\n"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]
    assert target.stat().st_mode & 0o777 != 0o600  # not left with mkstemp's private mode


def test_json_npy_png_round_trip(tmp_path):
    atomic_write_json(tmp_path / "r.json", {"b": 1, "a": [1.5, "x"]})
    text = (tmp_path / "r.json").read_text()
    assert json.loads(text) == {"b": 1, "a": [1.5, "x"]}
    assert text.index('"b"') < text.index('"a"')  # insertion order kept (sort_keys=False)
    assert text.startswith('{\n  "b"')  # indent=2

    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    atomic_save_npy(tmp_path / "m.npy", array)
    np.testing.assert_array_equal(np.load(tmp_path / "m.npy"), array)

    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0] = 200  # red in RGB order
    atomic_save_png(tmp_path / "c.png", rgb)
    bgr = cv2.imread(str(tmp_path / "c.png"), cv2.IMREAD_UNCHANGED)
    assert bgr.shape == (2, 3, 3) and (bgr[..., 2] == 200).all() and (bgr[..., :2] == 0).all()

    grey = np.array([[0, 128, 255]], np.uint8)
    atomic_save_png(tmp_path / "g.png", grey)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "g.png"), cv2.IMREAD_UNCHANGED), grey)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "g.png", "m.npy", "r.json"]


def test_png_rejects_non_uint8_without_touching_target(tmp_path):
    target = tmp_path / "x.png"
    target.write_bytes(b"keep")
    with pytest.raises(ValueError, match="uint8"):
        atomic_save_png(target, np.zeros((2, 2), np.float32))
    assert target.read_bytes() == b"keep"
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_data_error_names_file_and_line():
    from utils.errors import DataError

    assert str(DataError.at("a/b.txt", 3, "bad\nvalue")) == "a/b.txt:3: bad value"
    assert str(DataError.at("a/b.txt", msg="missing")) == "a/b.txt: missing"
    assert str(DataError.at("a/b.txt", "missing")) == "a/b.txt: missing"
    assert isinstance(DataError.at("x", 1, "y"), ValueError)
