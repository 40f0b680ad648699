"""Every training stage of both methods on the ImageNet layouts, whose training images carry no box:
the ``ilsvrc`` layout (train/<wnid>/ folders) and the ``metadata`` layout without
``train/localization.txt``. Each stage is interrupted (Ctrl-C) after its first checkpointed step,
ends with one line naming the checkpoint and exit status 130, resumes from it with the same
command, and refuses a different run into its folder with one line, leaving the folder as it was.
The hand-offs between the stages (pseudo masks, pseudo boxes of the training split) run on the same
box-less split. Tiny images, two steps, random weights, CPU."""
import hashlib
import os
import shutil

import pytest

from utils.engine import rundir
from utils.engine.rundir import run_cli
from utils.engine.trainer import Trainer

try:
    from tests.builders import make_tiny_ilsvrc, make_tiny_metadata
except ImportError:  # plain `pytest` puts tests/ itself on sys.path
    from builders import make_tiny_ilsvrc, make_tiny_metadata

# six training images of two classes (72 x 64 and 64 x 72): three steps of two per epoch
TRAIN = {"n01000001": [(f"n01000001_{i}.JPEG", (72, 64)) for i in range(3)],
         "n02000002": [(f"n02000002_{i}.JPEG", (64, 72)) for i in range(3)]}
META = {"train": [(f"img/train_{i}.png", i % 2, (72, 64) if i % 2 else (64, 72), None) for i in range(6)],
        "test": [("img/test_0.png", 0, (72, 64), [(4, 4, 60, 50)]),
                 ("img/test_1.png", 1, (64, 72), [(10, 2, 50, 70)])]}
COMMON = ["--device", "cpu", "--workers", "0", "--seed", "0", "--resize-size", "40", "--input-size", "32",
          "--backbone", "resnet18", "--batch-size", "2"]
TRAIN_ARGS = ["--pretrained", "none", "--epochs", "1", "--max-steps-per-epoch", "2", "--save-every-steps", "1"]


def tree_hash(folder) -> dict:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            if name != rundir.LOCK_NAME:
                path = os.path.join(root, name)
                out[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


@pytest.fixture(params=["ilsvrc", "metadata"])
def dataset(request, tmp_path):
    """(data options, layout) of a tiny ImageNet-layout set whose training images have no box."""
    if request.param == "ilsvrc":
        root = make_tiny_ilsvrc(tmp_path / "ILSVRC", train=TRAIN)
        return ["--data-root", str(root), "--layout", "ilsvrc"], "ilsvrc"
    root = make_tiny_metadata(tmp_path / "ImageNetV2", splits=META)
    assert not (root / "metadata" / "train" / "localization.txt").exists()
    return ["--data-root", str(root), "--layout", "metadata"], "metadata"


def stage(module_name: str, stage_name: str, argv, capsys, *, code: int | None = None) -> tuple[str, str]:
    """Run a stage script in-process as its command line does (``run_cli``); ``code``: the exit status
    it must end with (then its one ``error:`` line and no traceback). Returns (stdout, the error line)."""
    import importlib

    module = importlib.import_module(module_name)
    capsys.readouterr()
    if code is None:
        run_cli(module.main, module.get_args_parser, stage_name, [str(a) for a in argv])
        return capsys.readouterr().out, ""
    with pytest.raises(SystemExit) as info:
        run_cli(module.main, module.get_args_parser, stage_name, [str(a) for a in argv])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("error")]
    assert info.value.code == code and len(lines) == 1 and "Traceback" not in captured.err, captured.err[-2000:]
    return captured.out, lines[0]


def interrupt_resume_refuse(module_name, stage_name, argv, out, capsys, monkeypatch, other=("--lr", "0.5")):
    """Ctrl-C before the second step (the first is checkpointed), the same command resumes from the
    checkpoint and finishes, another run (``other``) into the folder is refused, the folder unchanged."""
    real_step = Trainer.train_step

    def interrupted_step(self, batch, loss_fn):
        if self.global_step == 1:
            raise KeyboardInterrupt
        return real_step(self, batch, loss_fn)

    monkeypatch.setattr(Trainer, "train_step", interrupted_step)
    _, line = stage(module_name, stage_name, argv, capsys, code=130)
    checkpoint = out / "checkpoint.pth"
    assert line == (f"error: {checkpoint}: interrupted (Ctrl-C): the same command resumes the run from this "
                    "checkpoint (epoch 0, step 1, global step 1)")
    assert not (out / "model.pth").exists()
    monkeypatch.setattr(Trainer, "train_step", real_step)
    printed, _ = stage(module_name, stage_name, argv, capsys)
    assert f"from {checkpoint}: epoch 0 step 1 (global step 1)" in printed
    assert (out / "model.pth").is_file()
    before = tree_hash(out)
    _, line = stage(module_name, stage_name, [*argv, *other], capsys, code=2)
    assert f"{checkpoint}: it holds another run (--{other[0][2:]}" in line and "--overwrite" in line
    assert tree_hash(out) == before


def test_spol_cls_cam_seg_train_resume_and_refuse_on_imagenet_layouts(dataset, tmp_path, capsys, monkeypatch):
    data, layout = dataset
    data = data + (["--dataset", "imagenet"] if layout == "metadata" else [])
    cls, cam, seg = tmp_path / "cls", tmp_path / "cam", tmp_path / "seg"
    interrupt_resume_refuse("spol.cls.train", "cls_train", [*data, *COMMON, *TRAIN_ARGS, "--output-dir", cls],
                            cls, capsys, monkeypatch)
    interrupt_resume_refuse("spol.cam.train", "cam_train", [*data, *COMMON, *TRAIN_ARGS, "--output-dir", cam,
                                                            "--loss", "single_head"], cam, capsys, monkeypatch)
    # pseudo masks of the box-less training images, then the seg stage on them
    stage("spol.cam.test", "cam_test", [*data, "--device", "cpu", "--workers", "0", "--batch-size", "2",
                                        "--output-dir", cam, "--mask-workers", "1"], capsys)
    assert len(list((cam / "pseudo_masks").rglob("*.png"))) == 6
    interrupt_resume_refuse("spol.seg.train", "seg_train", [*data, *COMMON, *TRAIN_ARGS, "--output-dir", seg,
                                                            "--mask-dir", cam / "pseudo_masks"], seg, capsys,
                            monkeypatch)


def test_sltnet_localizer_regressor_classifier_train_resume_and_refuse_on_imagenet_layouts(
        dataset, tmp_path, capsys, monkeypatch):
    data, layout = dataset
    loc, reg, cls = tmp_path / "localizer", tmp_path / "regressor", tmp_path / "classifier"
    interrupt_resume_refuse("sltnet.localizer.train", "localizer_train",
                            [*data, *COMMON, *TRAIN_ARGS, "--top-k", "2", "--output-dir", loc], loc, capsys,
                            monkeypatch, other=("--alpha", "0.5"))
    # pseudo boxes of the box-less training images (no GT-known there), then the regressor on them
    stage("sltnet.localizer.test", "localizer_test",
          [*data, *COMMON, "--top-k", "2", "--split", "train", "--localizer-dir", loc, "--output-dir", loc / "train",
           "--no-scoremaps", "--no-maxboxacc"], capsys)
    assert len((loc / "train" / "boxes.csv").read_text().splitlines()) == 1 + 6
    interrupt_resume_refuse("sltnet.regressor.train", "regressor_train",
                            [*data, *COMMON, *TRAIN_ARGS, "--localizer-dir", loc, "--output-dir", reg], reg, capsys,
                            monkeypatch)
    interrupt_resume_refuse("sltnet.classifier.train", "classifier_train",
                            [*data, *COMMON, *TRAIN_ARGS, "--output-dir", cls], cls, capsys, monkeypatch)
    if layout == "metadata":
        # the localizer's test step decodes every image: an image_sizes.txt that is not the images'
        # sizes is one line naming it (the boxes would be scaled wrong), nothing is written
        root = tmp_path / "ImageNetV2"
        sizes = root / "metadata" / "test" / "image_sizes.txt"
        sizes.write_text(sizes.read_text().replace("img/test_1.png,64,72", "img/test_1.png,128,144"))
        before = tree_hash(loc)
        _, line = stage("sltnet.localizer.test", "localizer_test",
                        [*data, *COMMON, "--top-k", "2", "--split", "test", "--localizer-dir", loc], capsys, code=2)
        assert line == (f"error: {root / 'img' / 'test_1.png'}: image is 64x72 but {sizes}:2 says 128x144: its "
                        "boxes would be scaled wrong; use the images the annotations were made for, or fix them")
        assert tree_hash(loc) == before


def test_the_hash_of_a_dataset_with_boxes_is_unchanged_and_empty_boxes_hash(tiny_cub, tmp_path):
    """A run's identity holds a hash of its annotations: box-less records hash, and a dataset with boxes
    keeps the hash of the formula below, which stored checkpoints hold (their runs resume)."""
    import numpy as np
    from hashlib import blake2b

    from utils.data.layouts import load_records

    def stored(records):  # the formula of the hashes stored in checkpoints
        h = blake2b(digest_size=12)
        h.update(str(records.num_classes).encode())
        for r in records:
            h.update(f"{r.image_id}\0{int(r.label)}\0{tuple(r.size)}\0".encode())
            h.update(bytes(memoryview(r.boxes).cast("B")))
        return h.hexdigest()

    for split in ("train", "test"):
        records = load_records(tiny_cub, "cub", split)
        assert rundir.records_hash(records) == stored(records)
    ilsvrc = make_tiny_ilsvrc(tmp_path / "il")
    train = load_records(ilsvrc, "ilsvrc", "train")
    assert all(r.boxes.shape == (0, 4) for r in train)
    first = rundir.records_hash(train)
    shutil.copy(ilsvrc / "train" / "n01000001" / "n01000001_1.JPEG", ilsvrc / "train" / "n01000001" / "n01000001_3.JPEG")
    assert rundir.records_hash(load_records(ilsvrc, "ilsvrc", "train")) != first  # one more image: another hash
    assert np.asarray(train[0].boxes).nbytes == 0
