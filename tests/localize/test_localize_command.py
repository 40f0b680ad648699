"""``python -m localize`` called in-process (``localize.cli.cli``, what ``__main__`` calls) on untrained runs
of every kind: the files it writes, boxes in the original image's pixels worked out by hand, every
image mode and size, a corrupt image among good ones, and each error line (exit status 2)."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from localize.cli import cli, main
from localize.options import get_args_parser
from utils.evaluation.boxes import spol_box
from utils.evaluation.protocol import get_protocol

SIZES = {"wide.jpg": (80, 30), "grey.png": (40, 90), "rgba.png": (50, 50), "sub/palette.png": (60, 40),
         "deep.png": (44, 33)}


def parse(*argv):
    return get_args_parser().parse_args([str(a) for a in argv] + ["--device", "cpu", "--workers", "0"])


def localize(*argv):
    """``python -m localize ARGV --device cpu --workers 0`` in this process (its ``main``); its Result."""
    return main(parse(*argv))


def exit_line(capsys, *argv) -> str:
    """The one ``error:`` line of ``python -m localize ARGV`` (``cli``), which must end with exit status 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli(parse(*argv))
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


KINDS = [("seg", [], "spol"), ("localizer", [], "sltnet-map"), ("localizer", ["--kind", "cam"], "cam"),
         ("plain_cam", [], "cam"), ("regressor", [], "sltnet-final"),
         ("localizer", ["--kind", "sltnet-final"], "sltnet-final")]


@pytest.mark.parametrize("name,extra,kind", KINDS, ids=[f"{n}-{k}" for n, _, k in KINDS])
def test_every_kind_localizes_images_of_every_mode_and_size(made_runs, photos, tmp_path, capsys, name, extra, kind):
    out = tmp_path / "out"
    result = localize("--run", made_runs[name], *extra, "--images", photos, "--out", out, "--batch-size", 2)
    said = capsys.readouterr().out
    assert f"kind {kind}," in said and "localize: 5 of 5 images localized, 0 skipped" in said
    table = rows(out / "boxes.csv")
    assert table[0] == ["image", "x0", "y0", "x1", "y1", "score", "class", "class_name"]
    assert [r[0] for r in table[1:]] == sorted(SIZES) == result.names
    for row in table[1:]:
        w, h = SIZES[row[0]]
        x0, y0, x1, y1 = (float(v) for v in row[1:5])
        assert 0 <= x0 <= w and 0 <= x1 <= w and 0 <= y0 <= h and 0 <= y1 <= h
        if kind != "sltnet-final":   # an untrained regressor may predict x1 < x0, kept as the test step keeps it
            assert x0 <= x1 and y0 <= y1
        assert row[6] in ("0", "1") and row[7] == ["001.Red_bird", "002.Blue_bird"][int(row[6])]
        picture = Image.open(out / "pictures" / f"{row[0]}.png")
        assert picture.size == (w, h) and picture.mode == "RGB"
        if kind == "sltnet-final":
            assert not (out / "maps").exists()
        else:
            scoremap = np.load(out / "maps" / f"{row[0]}.npy")
            assert scoremap.shape == (32, 32) and scoremap.dtype == np.float32
            assert 0 <= scoremap.min() and scoremap.max() <= 1
        assert [float(v) for v in row[1:5]] == pytest.approx(result.boxes[result.names.index(row[0])], abs=0.006)
    meta = json.loads((out / "predictions.json").read_text())
    assert meta["kind"] == kind and meta["written_by"] == "python -m localize" and meta["device"] == "cpu"
    assert meta["version"] == "0.1.0" and meta["num_localized"] == 5 and meta["num_skipped"] == 0
    assert meta["run"] == str(made_runs[name].resolve()) and meta["run_options"]["input_size"] == 32
    assert meta["threshold_source"] and (meta["threshold"] is None) == (kind == "sltnet-final")
    assert [o["image"] for o in meta["outputs"]] == result.names
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    listed = sorted(f for o in meta["outputs"] for f in (o["picture"], o.get("map")) if f)
    assert written == sorted([".lock", "boxes.csv", "predictions.json", *listed])


def test_spol_boxes_are_the_saved_maps_boxes_in_original_pixels(made_runs, photos, tmp_path, capsys):
    out = tmp_path / "out"
    localize("--run", made_runs["seg"], "--images", photos, "--out", out)
    assert "localize: threshold 0.2: SPOL's fixed threshold for cub" in capsys.readouterr().out
    for row in rows(out / "boxes.csv")[1:]:
        box = spol_box(np.load(out / "maps" / f"{row[0]}.npy"), 0.2) or [0, 0, 0, 0]
        expected = get_protocol("resize", 32).to_image_box(box, SIZES[row[0]])
        assert [float(v) for v in row[1:5]] == pytest.approx(expected, abs=0.006)


# ----------------------------------------------------------------------------- boxes by hand
@pytest.fixture
def block_map(monkeypatch):
    """The SPOL network's sigmoid map replaced by 1 on input rows 8..15 and columns 4..11 (0 elsewhere):
    the authors' box of it is [4, 8, 12, 16] in input pixels (x, y, x + w, y + h)."""
    from localize import models

    def step(self, batch):
        maps = torch.zeros(len(batch["index"]), self.input_size, self.input_size)
        maps[:, 8:16, 4:12] = 1.0
        return {"index": torch.as_tensor(batch["index"]), "maps": maps}

    monkeypatch.setattr(models.Networks, "step", step)


def one_image(folder, size):
    folder.mkdir()
    Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8)).save(folder / "a.png")
    return folder


def test_a_box_goes_back_to_the_pixels_of_a_non_square_image(made_runs, tmp_path, block_map):
    images = one_image(tmp_path / "images", (128, 16))
    localize("--run", made_runs["seg"], "--classifier-run", "none", "--images", images, "--out", tmp_path / "a")
    # whole image at 32: x * 128 / 32 = 4x, y * 16 / 32 = y / 2: [4, 8, 12, 16] -> [16, 4, 48, 8]
    assert rows(tmp_path / "a" / "boxes.csv") == [["image", "x0", "y0", "x1", "y1", "score"],
                                                  ["a.png", "16", "4", "48", "8", "1.0000"]]
    # resize 40, centre crop 32 (offset 4): (x + 4) / 40 * 128 and (y + 4) / 40 * 16
    localize("--run", made_runs["seg"], "--classifier-run", "none", "--protocol", "spol", "--images", images,
             "--out", tmp_path / "b")
    assert rows(tmp_path / "b" / "boxes.csv")[1] == ["a.png", "25.6", "4.8", "51.2", "8", "1.0000"]


def test_a_regressor_box_goes_back_to_the_pixels_of_a_non_square_image(make_runs, tmp_path):
    made = make_runs("regressor", "classifier")
    weights = made["regressor"] / "model.pth"
    state = torch.load(weights, weights_only=True)
    last = max(k for k in state if k.startswith("fc.") and k.endswith(".bias"))
    state[last.replace("bias", "weight")].zero_()
    state[last].copy_(torch.tensor([0.25, 0.5, 1.5, 1.75]))   # p: the box / m, m = 16 (--box-stride)
    torch.save(state, weights)
    images = one_image(tmp_path / "images", (128, 16))
    result = localize("--run", made["regressor"], "--images", images, "--out", tmp_path / "out")
    # p * 16 = [4, 8, 24, 28] input pixels of 32 -> x * 4, y / 2: [16, 4, 96, 14]
    assert rows(tmp_path / "out" / "boxes.csv")[1][:5] == ["a.png", "16", "4", "96", "14"]
    assert float(rows(tmp_path / "out" / "boxes.csv")[1][5]) == pytest.approx(result.probabilities[0], abs=5e-5)


# ----------------------------------------------------------------------------- bad images
def test_a_corrupt_image_is_one_line_and_the_others_go_through(made_runs, photos, tmp_path, capsys):
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff not a JPEG")
    good = Image.new("RGB", (30, 20))
    good.save(photos / "cut.png")
    (photos / "cut.png").write_bytes((photos / "cut.png").read_bytes()[:40])   # truncated
    (photos / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    result = localize("--run", made_runs["seg"], "--images", photos, "--out", out, "--batch-size", 3)
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning:" in line]
    assert len(warnings) == 2 and "Traceback" not in captured.err
    assert any(f"warning: {photos / 'broken.jpg'}: unreadable or corrupt image" in w for w in warnings)
    assert any(f"warning: {photos / 'cut.png'}: unreadable or corrupt image" in w for w in warnings)
    assert "localize: 5 of 7 images localized, 2 skipped" in captured.out
    assert result.names == sorted(SIZES) and [n for n, _ in result.skipped] == ["broken.jpg", "cut.png"]
    meta = json.loads((out / "predictions.json").read_text())
    assert (meta["num_images"], meta["num_skipped"]) == (7, 2)
    assert [s["image"] for s in meta["skipped"]] == ["broken.jpg", "cut.png"]
    assert [r[0] for r in rows(out / "boxes.csv")[1:]] == sorted(SIZES)


@pytest.mark.slow  # a worker process
def test_a_corrupt_image_read_by_a_worker_process_is_the_same_line(made_runs, photos, tmp_path, capsys):
    (photos / "broken.png").write_bytes(b"\x89PNG not a PNG")
    args = get_args_parser().parse_args(["--run", str(made_runs["seg"]), "--images", str(photos),
                                         "--out", str(tmp_path / "out"), "--device", "cpu", "--workers", "1"])
    cli(args)   # returns: exit status 0
    captured = capsys.readouterr()
    assert f"warning: {photos / 'broken.png'}: unreadable or corrupt image" in captured.err
    assert "localize: 5 of 6 images localized, 1 skipped" in captured.out


def test_when_no_image_can_be_read_it_is_an_error_and_out_stays_as_it_was(made_runs, tmp_path, capsys,
                                                                           write_photos):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"nothing")
    (images / "b.png").write_bytes(b"")
    line = exit_line(capsys, "--run", made_runs["seg"], "--images", images, "--out", tmp_path / "new")
    assert line == f"error: {images}: none of its 2 images could be read (each named above): nothing was " \
                   f"written in {tmp_path / 'new'}"
    assert not (tmp_path / "new").exists()                   # the folder it would have made is not left
    # an --out holding an earlier command's outputs keeps them, byte for byte
    write_photos(tmp_path / "good")
    localize("--run", made_runs["seg"], "--images", tmp_path / "good", "--out", tmp_path / "old")
    before = {p.relative_to(tmp_path / "old"): p.read_bytes() for p in (tmp_path / "old").rglob("*") if p.is_file()}
    exit_line(capsys, "--run", made_runs["seg"], "--images", images, "--out", tmp_path / "old")
    after = {p.relative_to(tmp_path / "old"): p.read_bytes() for p in (tmp_path / "old").rglob("*") if p.is_file()}
    assert after == before


def test_images_folder_errors(made_runs, tmp_path, capsys):
    assert exit_line(capsys, "--run", made_runs["seg"], "--images", tmp_path / "none", "--out", tmp_path / "o") \
        == f"error: {tmp_path / 'none'}: --images: not found"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    assert exit_line(capsys, "--run", made_runs["seg"], "--images", tmp_path / "empty", "--out", tmp_path / "o") \
        == f"error: {tmp_path / 'empty'}: --images: no JPEG or PNG image in it or its sub-folders"
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- the output folder
def test_an_out_holding_files_of_yours_is_refused_and_left_alone(made_runs, photos, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("my notes")
    line = exit_line(capsys, "--run", made_runs["seg"], "--images", photos, "--out", out)
    assert line == f"error: {out}: --out holds files this command did not write (e.g. mine.txt): use a new or " \
                   "empty folder (nothing in it is replaced or moved)"
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"] and (out / "mine.txt").read_text() == "my notes"
    # a file of yours among an earlier command's outputs
    (out / "mine.txt").unlink()
    localize("--run", made_runs["seg"], "--images", photos, "--out", out)
    (out / "maps" / "extra.npy").write_bytes(b"mine")
    line = exit_line(capsys, "--run", made_runs["seg"], "--images", photos, "--out", out)
    assert "(e.g. maps/extra.npy)" in line and (out / "maps" / "extra.npy").read_bytes() == b"mine"
    # --out inside --images (its pictures would be read as images next time) or holding it
    line = exit_line(capsys, "--run", made_runs["seg"], "--images", photos, "--out", photos / "results")
    assert line.endswith("--out lies inside the --images folder " + str(photos) + ": its pictures would be read "
                         "as images the next time; choose another --out")
    assert not (photos / "results").exists()
    line = exit_line(capsys, "--run", made_runs["seg"], "--images", photos, "--out", tmp_path)
    assert line == f"error: {tmp_path}: --out holds the --images folder {photos}: choose another --out"
    (tmp_path / "file").write_text("x")
    assert exit_line(capsys, "--run", made_runs["seg"], "--images", photos, "--out", tmp_path / "file") == \
        f"error: {tmp_path / 'file'}: --out: is a file, not a folder"


def test_a_second_command_replaces_its_own_outputs(made_runs, photos, tmp_path, capsys):
    out = tmp_path / "out"
    localize("--run", made_runs["seg"], "--images", photos, "--out", out)
    assert (out / "maps" / "wide.jpg.npy").is_file()
    (photos / "wide.jpg").unlink()
    localize("--run", made_runs["regressor"], "--images", photos, "--out", out)
    assert not (out / "maps").exists() and not (out / "pictures" / "wide.jpg.png").exists()
    assert sorted(p.name for p in out.iterdir()) == [".lock", "boxes.csv", "pictures", "predictions.json"]
    assert json.loads((out / "predictions.json").read_text())["kind"] == "sltnet-final"


@pytest.mark.slow  # a killed subprocess
def test_what_a_killed_command_left_is_put_back_by_the_next(made_runs, photos, tmp_path, capsys):
    """A command killed while it wrote leaves its predecessor's outputs in ``.previous.<PID>`` (moved there
    by utils.engine.rundir.protect_outputs) and half of its own: the next command is not refused for
    them, and puts the earlier outputs back exactly (here it fails, so they stay)."""
    import shutil
    import subprocess
    import sys

    out = tmp_path / "out"
    localize("--run", made_runs["seg"], "--images", photos, "--out", out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()                                               # a PID no process has any more
    backup = out / f".previous.{gone.pid}"
    backup.mkdir()
    for name in ("boxes.csv", "predictions.json", "maps", "pictures"):
        shutil.move(out / name, backup / name)
    (backup / ".names").write_text("boxes.csv\tpredictions.json\tmaps\tpictures\n\n")
    (out / "maps").mkdir()
    (out / "maps" / "wide.jpg.npy").write_bytes(b"half")     # the killed command's own, half written
    (out / "maps" / ".grey.png.npy.abcd1234.tmp").write_bytes(b"")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"nothing")
    assert exit_line(capsys, "--run", made_runs["seg"], "--images", bad, "--out", out).startswith(
        f"error: {bad}: none of its 1 images could be read")   # not refused: it ran, failed, and put back
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before


def test_ctrl_c_is_one_line_and_leaves_out_as_it_was(made_runs, photos, tmp_path, capsys, monkeypatch):
    from localize import outputs

    out = tmp_path / "out"
    localize("--run", made_runs["seg"], "--images", photos, "--out", out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def interrupt(self, entry):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs.Writer, "image", interrupt)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli(parse("--run", made_runs["seg"], "--images", photos, "--out", out))
    assert info.value.code == 130
    assert capsys.readouterr().err.splitlines()[-1] == f"error: {out}: interrupted (Ctrl-C): --out is as it was " \
                                                       "before; the same command runs it again"
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


# ----------------------------------------------------------------------------- runs and weights
def test_a_folder_that_is_no_run_is_one_line(tmp_path, photos, capsys, write_photos):
    write_photos(tmp_path / "data")
    assert exit_line(capsys, "--run", tmp_path / "data", "--images", photos, "--out", tmp_path / "o").startswith(
        f"error: {tmp_path / 'data'}: --run: not a training run of this project (no model.pth beside the args.yaml")
    assert exit_line(capsys, "--images", photos, "--out", tmp_path / "o") == \
        "error: give a run folder (--run) or a SPOL seg checkpoint file (--checkpoint)"
    assert not (tmp_path / "o").exists()


def test_weights_of_another_network_are_one_line(make_runs, photos, tmp_path, capsys):
    made = make_runs("seg", "cls")
    (made["seg"] / "model.pth").write_bytes((made["cls"] / "model.pth").read_bytes())
    line = exit_line(capsys, "--run", made["seg"], "--images", photos, "--out", tmp_path / "o")
    assert line.startswith(f"error: {made['seg'] / 'model.pth'}: weights do not fit SegModel: unexpected keys")
    # a SPOL seg state dict given as --checkpoint with another backbone than its own
    checkpoint = tmp_path / "seg_resnet18.pth"
    checkpoint.write_bytes((make_runs("seg")["seg"] / "model.pth").read_bytes())
    line = exit_line(capsys, "--checkpoint", checkpoint, "--backbone", "resnet50", "--dataset", "cub",
                     "--images", photos, "--out", tmp_path / "o")
    assert line.startswith(f"error: {checkpoint}: weights do not fit SegModel: ") and "missing keys" in line
    checkpoint.write_bytes(checkpoint.read_bytes()[:4096])   # truncated
    line = exit_line(capsys, "--checkpoint", checkpoint, "--backbone", "resnet18", "--dataset", "cub",
                     "--images", photos, "--out", tmp_path / "o")
    assert line.startswith(f"error: {checkpoint}: not a readable PyTorch checkpoint")
    assert not (tmp_path / "o").exists()


def test_a_seg_state_dict_without_its_folder(make_runs, photos, tmp_path, capsys):
    checkpoint = tmp_path / "seg.pth"
    checkpoint.write_bytes((make_runs("seg")["seg"] / "model.pth").read_bytes())
    common = ["--checkpoint", checkpoint, "--backbone", "resnet18", "--input-size", "32", "--images", photos]
    assert exit_line(capsys, *common, "--out", tmp_path / "o") == \
        "error: --checkpoint: pass --dataset cub or --dataset imagenet (SPOL's fixed threshold, 0.2 or 0.8), or --threshold"
    result = localize(*common, "--dataset", "imagenet", "--out", tmp_path / "o")
    said = capsys.readouterr().out
    assert f"localize: {checkpoint}: kind spol, SPOL seg model (resnet18, output stride 32) of {checkpoint}" in said
    assert "localize: threshold 0.8: SPOL's fixed threshold for imagenet" in said
    assert result.classes is None and rows(tmp_path / "o" / "boxes.csv")[0] == ["image", "x0", "y0", "x1", "y1", "score"]
    assert np.load(tmp_path / "o" / "maps" / "wide.jpg.npy").shape == (32, 32)


@pytest.mark.parametrize("argv,message", [
    (["--kind", "cam"], "--kind cam: the folder is a SPOL seg run, whose kinds are spol"),
    (["--backbone", "resnet18"], "--backbone: read from the run's args.yaml; it describes a --checkpoint file only"),
    (["--classifier-run", "REGRESSOR"], "--classifier-run: is an SLT-Net regressor run; kind spol takes a SPOL "
                                             "cls run (spol/cls/train.py)"),
])
def test_options_that_do_not_fit_the_run_are_one_line(made_runs, photos, tmp_path, capsys, argv, message):
    argv = [a.replace("REGRESSOR", str(made_runs["regressor"])) for a in argv]
    assert exit_line(capsys, "--run", made_runs["seg"], *argv, "--images", photos, "--out", tmp_path / "o") \
        .endswith(message)
    assert exit_line(capsys, "--run", made_runs["regressor"], "--threshold", "0.3", "--images", photos, "--out",
                     tmp_path / "o").endswith("--threshold: kind sltnet-final takes its box from the regressor "
                                              "(Fig. 2c); no threshold makes it")
    assert not (tmp_path / "o").exists()


def test_threshold_line_says_which_and_why(made_runs, photos, tmp_path, capsys):
    localize("--run", made_runs["plain_cam"], "--threshold", "0.5", "--images", photos, "--out", tmp_path / "o")
    said = capsys.readouterr().out.splitlines()
    assert said[1] == "localize: threshold 0.5: --threshold, of the map's max (the run's box rule zhou)"
    meta = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert (meta["threshold"], meta["box_rule"]) == (0.5, "zhou") and meta["threshold_source"].startswith("--threshold")
    assert meta["options"]["threshold"] == 0.5 and meta["protocol"]["geometry"] == "whole image at 32"


# ----------------------------------------------------------------------------- the command line
def test_help_and_a_bad_option_are_answered_before_torch_loads():
    """``python -m localize --help`` lists every option with its default; a bad value is one line, exit 2;
    neither loads torch (the parser's module imports none)."""
    import os
    import subprocess
    import sys

    from utils.paths import REPO_ROOT

    code = ("import contextlib, io, runpy, sys\n"
            "sys.argv = ['localize'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('localize', run_name='__main__', alter_sys=True)\n"
            "except SystemExit as exc:\n    print('EXIT', exc.code, 'torch' in sys.modules)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    helped = subprocess.run([sys.executable, "-c", code, "--help"], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert helped.stdout.startswith("usage: python -m localize "), helped.stderr[-2000:]
    assert helped.stdout.strip().endswith("EXIT 0 False")
    for option in ("--run", "--checkpoint", "--kind", "--classifier-run", "--threshold", "--images", "--out",
                   "--device", "--batch-size", "--amp", "--protocol"):
        assert option in helped.stdout
    assert "(default: 16)" in helped.stdout
    bad = subprocess.run([sys.executable, "-c", code, "--images", "x", "--out", "y", "--threshold", "2"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bad.stderr.strip() == "error: argument --threshold: must be a number in [0, 1], got '2' (see python -m " \
                                 "localize --help)"
    assert bad.stdout.strip() == "EXIT 2 False"
