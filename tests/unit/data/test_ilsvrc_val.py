"""The 'ilsvrc' layout's val split: a class-folder tree (val/<wnid>/*.JPEG, TS-CAM and PSOL users' layout)
next to the flat val/ + val.txt, and val.txt written from the official devkit by the snippet of
dataset/README.md (run here as it is written there, on a fake devkit).

tests/builders.py's tree: wnids n01000001 (index 0), n02000002 (index 1); val image 1 is n01000001 with
two boxes of its class and one of n02000002, val image 2 is n02000002 with one box.
"""
import importlib.util
import re
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from utils.data.layouts import class_names, load_records
from utils.errors import DataError

try:
    from tests.builders import ILSVRC_VAL, make_tiny_ilsvrc
except ImportError:  # plain `pytest` puts tests/ itself on sys.path
    from builders import ILSVRC_VAL, make_tiny_ilsvrc

README = Path(__file__).resolve().parents[3] / "dataset" / "README.md"
WNIDS = ["n01000001", "n02000002"]


def error_of(*args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_records(*args, **kwargs)
    return str(info.value)


def into_class_folders(root: Path, *, keep_val_txt: bool = False) -> Path:
    """Move every val image into val/<wnid of its label>/, as TS-CAM and PSOL users keep them."""
    for name, label, _, _ in ILSVRC_VAL:
        (root / "val" / WNIDS[label]).mkdir(exist_ok=True)
        (root / "val" / name).rename(root / "val" / WNIDS[label] / name)
    if not keep_val_txt:
        (root / "val.txt").unlink()
    return root


def summary(records):
    return [(r.image_id, r.label, r.size, r.boxes.tolist()) for r in records]


def test_class_folder_val_reads_as_the_flat_tree(tiny_ilsvrc, tmp_path):
    flat = load_records(tiny_ilsvrc, "ilsvrc", "val")
    folders = into_class_folders(make_tiny_ilsvrc(tmp_path / "folders"))
    records = load_records(folders, "ilsvrc", "val")
    assert summary(records) == summary(flat)  # same ids (val/<file>), labels, sizes, boxes
    assert records[1].path == str((folders / "val/n02000002/ILSVRC2012_val_00000002.JPEG").resolve())
    assert [r.image_id for r in load_records(folders, "ilsvrc", "val", exclude_ids=["ILSVRC2012_val_00000001.JPEG"])] \
        == ["val/ILSVRC2012_val_00000002.JPEG"]


def test_class_order_from_the_val_folders_without_train_or_wnids(tmp_path):
    root = into_class_folders(make_tiny_ilsvrc(tmp_path / "il", with_train=False))
    (root / "wnids.txt").unlink()
    assert class_names(root, "ilsvrc") == WNIDS
    assert [r.label for r in load_records(root, "ilsvrc", "val")] == [0, 1]


def test_val_txt_with_class_folders_gives_the_labels(tmp_path):
    root = into_class_folders(make_tiny_ilsvrc(tmp_path / "il"), keep_val_txt=True)
    assert [r.label for r in load_records(root, "ilsvrc", "val")] == [0, 1]
    # val.txt and the folders disagree: the image is not where its label says
    (root / "val.txt").write_text("ILSVRC2012_val_00000001.JPEG 0\nILSVRC2012_val_00000002.JPEG 0\n")
    assert "val.txt:2: image" in error_of(root, "ilsvrc", "val")


def test_class_folder_errors(tmp_path):
    root = into_class_folders(make_tiny_ilsvrc(tmp_path / "il"))
    (root / "val/n09999999").mkdir()
    assert "val/n09999999: val class folder n09999999 is not one of the 2 wnids" in error_of(root, "ilsvrc", "val")
    (root / "val/n09999999").rmdir()
    shutil.copy(root / "val/n02000002/ILSVRC2012_val_00000002.JPEG", root / "val/n01000001/")
    assert "ILSVRC2012_val_00000002.JPEG: val image ILSVRC2012_val_00000002.JPEG is also in n01000001/" in \
        error_of(root, "ilsvrc", "val")
    flat = make_tiny_ilsvrc(tmp_path / "flat")
    (flat / "val.txt").unlink()
    assert "val.txt: missing val label list file: the 'ilsvrc' layout needs root/val.txt or val/<wnid>/ class " \
           "folders" in error_of(flat, "ilsvrc", "val")


# ----------------------------------------------------------------------------- the devkit snippet
def readme_devkit_snippet() -> str:
    text = README.read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "validation_ground_truth" in b]
    assert len(blocks) == 1, "dataset/README.md must hold one python block that writes val.txt"
    return blocks[0]


# the devkit's meta.mat "synsets": ILSVRC2012_ID, WNID, ..., num_children; leaves (the classes) are
# numbered in the devkit's order, which is NOT the sorted order: ID 1 = n02000002, ID 2 = n01000001
SYNSETS = [(1, "n02000002", 0), (2, "n01000001", 0), (3, "n00000003", 2)]
FIELDS = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
          "num_train_images")


def synsets_as_loadmat_gives_them() -> np.ndarray:
    """What ``scipy.io.loadmat(meta.mat, squeeze_me=True)["synsets"]`` returns: a 1-D structured array
    of object fields, one record per synset."""
    out = np.empty(len(SYNSETS), dtype=[(f, "O") for f in FIELDS])
    for i, (ilsvrc_id, wnid, children) in enumerate(SYNSETS):
        out[i] = (ilsvrc_id, wnid, wnid, "", children, np.zeros(0), 0, 0)
    return out


def write_fake_devkit(folder: Path, monkeypatch) -> None:
    data = folder / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    # ground truth: line n = ILSVRC2012_ID of val image n (image 1 is n01000001 = ID 2, image 2 n02000002 = ID 1)
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("2\n1\n")
    if importlib.util.find_spec("scipy") is not None:  # a real meta.mat (doubles, as MATLAB writes them)
        from scipy.io import savemat

        synsets = np.zeros((len(SYNSETS), 1), dtype=[(f, "O") for f in FIELDS])
        for i, (ilsvrc_id, wnid, children) in enumerate(SYNSETS):
            synsets[i, 0] = (float(ilsvrc_id), wnid, wnid, "", float(children), np.zeros((1, 0)), 0.0, 0.0)
        savemat(str(data / "meta.mat"), {"synsets": synsets})
        return
    # without SciPy: a stand-in scipy.io whose loadmat returns what SciPy's returns for that file
    (data / "meta.mat").write_bytes(b"")

    def loadmat(path, squeeze_me=False):
        assert Path(path) == Path("ILSVRC2012_devkit_t12/data/meta.mat") and squeeze_me
        return {"synsets": synsets_as_loadmat_gives_them()}

    scipy, scipy_io = types.ModuleType("scipy"), types.ModuleType("scipy.io")
    scipy_io.loadmat, scipy.io = loadmat, scipy_io
    monkeypatch.setitem(sys.modules, "scipy", scipy)
    monkeypatch.setitem(sys.modules, "scipy.io", scipy_io)


def test_readme_snippet_writes_val_txt_the_reader_accepts(tmp_path, monkeypatch):
    root = make_tiny_ilsvrc(tmp_path / "dataset" / "ILSVRC2012")
    expected = load_records(root, "ilsvrc", "val")
    (root / "val.txt").unlink()
    write_fake_devkit(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_devkit_snippet(), str(README), "exec"), {})
    # sorted wnids: n01000001 = 0, n02000002 = 1 (the devkit's ID - 1 would give 1, 0)
    assert (root / "val.txt").read_text() == "ILSVRC2012_val_00000001.JPEG 0\nILSVRC2012_val_00000002.JPEG 1\n"
    assert summary(load_records(root, "ilsvrc", "val")) == summary(expected)


def test_a_val_txt_in_the_devkits_order_is_caught_by_the_xml(tiny_ilsvrc):
    # ID - 1 as the index: image 1 labelled n02000002 gets that class's box (no error: its XML has one),
    # image 2 labelled n01000001 has no such object: the reader stops there
    (tiny_ilsvrc / "val.txt").write_text("ILSVRC2012_val_00000001.JPEG 1\nILSVRC2012_val_00000002.JPEG 0\n")
    assert "ILSVRC2012_val_00000002.xml: no object of the labelled class n01000001" in \
        error_of(tiny_ilsvrc, "ilsvrc", "val")
