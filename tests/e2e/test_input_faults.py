"""Bad input on every entry point, provoked for real: an annotation that disagrees with its image, an
option out of its range, a config key given twice, an output folder that cannot be written or that
is a dataset, Ctrl-C. Each ends with one ``error:`` line naming the file or the option (or, where
the run goes on, one ``warning:`` line), exit status 2 (130 for Ctrl-C), no traceback, and leaves
what was written before as it was (folders hashed before and after, as in tests/test_faults.py)."""
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from utils.engine.rundir import run_cli
from utils.errors import DataError

try:
    from tests.builders import make_tiny_cub, make_tiny_metadata
    from tests.test_faults import TOY, env, one_error, run, tree_hash
except ImportError:  # plain `pytest` puts tests/ itself on sys.path
    from builders import make_tiny_cub, make_tiny_metadata
    from test_faults import TOY, env, one_error, run, tree_hash

REPO = Path(__file__).resolve().parent.parent


def in_process(capsys, fn, *args, code: int = 2) -> str:
    """Call an entry point's function in this process: the one error line it ends with (exit status
    ``code``, no traceback)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        fn(*args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert info.value.code == code and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def stage_error(capsys, module_name: str, stage: str, argv, code: int = 2) -> str:
    """A stage script run in-process as its command line does (``utils.config.run_cli``)."""
    module = importlib.import_module(module_name)
    return in_process(capsys, run_cli, module.main, module.get_args_parser, stage, [str(a) for a in argv], code=code)


def stage_warnings(capsys, module_name: str, stage: str, argv) -> list[str]:
    module = importlib.import_module(module_name)
    capsys.readouterr()
    run_cli(module.main, module.get_args_parser, stage, [str(a) for a in argv])
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]


def previous_run(folder: Path) -> dict:
    """A folder holding files written before (as a previous run would leave them): their hashes."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "log.jsonl").write_text('{"step": 1}\n')
    (folder / "notes.txt").write_text("written before")
    return tree_hash(folder)


def save_maps(folder: Path, records, size: int) -> Path:
    for r in records:
        path = folder / (os.path.splitext(r.image_id)[0] + ".npy")
        path.parent.mkdir(parents=True, exist_ok=True)
        m = np.zeros((size, size), np.float32)
        m[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1.0
        np.save(path, m)
    return folder


def evaluate_args(root, layout, split, maps, output, *extra):
    return ["--data-root", str(root), "--layout", layout, "--split", split, "--scoremaps", str(maps),
            "--protocol", "wsol", "--input-size", "32", "--output", str(output), *extra]


# ----------------------------------------------------------------------------- annotations vs images
def test_an_xml_size_that_is_not_the_images_is_an_error_in_the_evaluator_and_the_dataset(tiny_ilsvrc, tmp_path,
                                                                                       capsys):
    """A resized copy of an ILSVRC val image kept with its original XML: the boxes would be scaled by
    the XML's size (MaxBoxAccV2 moved, nobody told)."""
    from utils.data.dataset import WSOLDataset
    from utils.evaluation.evaluate import cli
    from utils.data.layouts import load_records
    from utils.data.transforms import build_transform

    maps = save_maps(tmp_path / "maps", load_records(tiny_ilsvrc, "ilsvrc", "val"), 32)
    image = tiny_ilsvrc / "val" / "ILSVRC2012_val_00000002.JPEG"
    Image.open(image).resize((20, 20)).save(image)  # the XML still says 40 x 40
    before = tree_hash(tmp_path / "maps")
    out = tmp_path / "eval" / "val.json"
    line = in_process(capsys, cli, evaluate_args(tiny_ilsvrc, "ilsvrc", "val", maps, out))
    xml = tiny_ilsvrc / "box" / "ILSVRC2012_val_00000002.xml"
    assert line == (f"error: {image}: image is 20x20 but {xml} says 40x40: its boxes would be scaled wrong; use "
                    "the images the annotations were made for, or fix them")
    assert not out.parent.exists() and tree_hash(tmp_path / "maps") == before
    # a stage decodes the image: the same line
    dataset = WSOLDataset(load_records(tiny_ilsvrc, "ilsvrc", "val"), build_transform("resize", resize=16))
    dataset[0]
    with pytest.raises(DataError) as info:
        dataset[1]
    assert f"error: {info.value}" == line


def test_image_sizes_txt_that_is_not_the_images_is_an_error_in_the_evaluator(tiny_metadata, tmp_path, capsys):
    from utils.evaluation.evaluate import cli
    from utils.data.layouts import load_records

    maps = save_maps(tmp_path / "maps", load_records(tiny_metadata, "metadata", "test"), 32)
    sizes = tiny_metadata / "metadata" / "test" / "image_sizes.txt"
    sizes.write_text(sizes.read_text().replace("birds/b_0002.png,24,32", "birds/b_0002.png,48,64"))
    out = tmp_path / "eval.json"
    line = in_process(capsys, cli, evaluate_args(tiny_metadata, "metadata", "test", maps, out))
    assert line.startswith(f"error: {tiny_metadata / 'birds' / 'b_0002.png'}: image is 24x32 but {sizes}:2 says "
                           "48x64") and not out.exists()


def test_a_gt_mask_of_another_size_is_refused_by_the_evaluator_as_by_the_dataset(tiny_cub, tmp_path, capsys):
    """PxAP stretched the mask to the map without a word; the training dataset refused it."""
    from utils.data.dataset import WSOLDataset
    from utils.evaluation.evaluate import cli
    from utils.data.layouts import load_records
    from utils.data.transforms import build_transform

    records = load_records(tiny_cub, "cub", "test")
    maps = save_maps(tmp_path / "maps", records, 32)
    mask = tiny_cub / "segmentations" / "002.Blue_bird" / "Blue_0002.png"
    Image.fromarray(np.full((48, 64), 255, np.uint8)).save(mask)
    line = in_process(capsys, cli, evaluate_args(tiny_cub, "cub", "test", maps, tmp_path / "eval.json"))
    assert line == f"error: {mask}: mask is 64x48 but its image is 32x24"
    with pytest.raises(DataError) as info:
        WSOLDataset(records, build_transform("resize", resize=16), with_gt_mask=True)[1]
    assert f"error: {info.value}" == line
    assert not (tmp_path / "eval.json").exists()


def _pixels(path, size):
    """The dataset's uint8 RGB image of ``path`` (a one-record dataset, no resampling)."""
    from utils.data.dataset import WSOLDataset
    from utils.data.layouts import Record
    from utils.data.transforms import build_transform

    record = Record("x", str(path), 0, np.zeros((0, 4), np.float32), size, None)
    item = WSOLDataset([record], build_transform("resize", resize=(size[1], size[0]), normalize=False))[0]
    return item["image"].permute(1, 2, 0).numpy()


def test_16_bit_palette_and_cmyk_images_are_read_with_their_values(tmp_path):
    # 16-bit grey: the high byte, as OpenCV reads it (PIL's own convert made it all white)
    grey = np.array([[0, 0x80FF, 0xFFFF, 0x0180], [300, 0x1000, 0x7F00, 0xFF00]], np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), grey)
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    expected = np.array([[0, 128, 255, 1], [1, 16, 127, 255]], np.uint8)
    np.testing.assert_array_equal(_pixels(tmp_path / "g16.png", (4, 2)), np.repeat(expected[..., None], 3, 2))
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "g16.png"), cv2.IMREAD_GRAYSCALE), expected)
    # 16-bit RGB: the high byte of each channel
    rgb = np.stack([grey, grey // 2, np.full_like(grey, 0x4000)], -1)
    cv2.imwrite(str(tmp_path / "c16.png"), rgb[..., ::-1].copy())
    np.testing.assert_array_equal(_pixels(tmp_path / "c16.png", (4, 2)), (rgb >> 8).astype(np.uint8))
    # palette: the palette's colours
    pal = Image.new("P", (4, 2))
    pal.putpalette([0, 0, 0, 10, 200, 30, 250, 5, 90] + [0] * 759)
    for x, y, index in ((1, 0, 1), (2, 1, 2)):
        pal.putpixel((x, y), index)
    pal.save(tmp_path / "p.png")
    pixels = _pixels(tmp_path / "p.png", (4, 2))
    assert pixels[0, 1].tolist() == [10, 200, 30] and pixels[1, 2].tolist() == [250, 5, 90]
    assert pixels[0, 0].tolist() == [0, 0, 0]
    # CMYK JPEG (PIL's Adobe inversion included): pure red and a mid grey
    for cmyk, rgb_expected in (((0, 255, 255, 0), (255, 0, 0)), ((0, 0, 0, 128), (127, 127, 127))):
        Image.new("CMYK", (4, 2), cmyk).save(tmp_path / "c.jpg", quality=100)
        assert np.abs(_pixels(tmp_path / "c.jpg", (4, 2)).astype(int) - rgb_expected).max() <= 2


def test_an_image_mode_that_cannot_be_converted_is_one_line(tmp_path):
    from utils.data.dataset import WSOLDataset

    Image.fromarray(np.linspace(0, 1, 8, dtype=np.float32).reshape(2, 4), "F").save(tmp_path / "f.tif")
    with pytest.raises(DataError, match=r"f\.tif: image of PIL mode F is not supported: save it as an 8- or "
                                        r"16-bit RGB, grey or palette image$"):
        WSOLDataset._open(tmp_path / "f.tif", "RGB", "image")


# ----------------------------------------------------------------------------- options out of range
SPOL_DATA = ["--device", "cpu", "--workers", "0", "--pretrained", "none"]


@pytest.mark.parametrize("module,stage,argv,message", [
    ("spol.cls.train", "cls_train", ["--epochs", "0"], "argument --epochs: must be an integer >= 1, got '0'"),
    ("spol.cam.train", "cam_train", ["--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got '0'"),
    ("spol.seg.train", "seg_train", ["--lr", "-1"], "argument --lr: must be a number > 0, got '-1'"),
    ("sltnet.localizer.train", "localizer_train", ["--input-size", "0"],
     "argument --input-size: must be an integer >= 1, got '0'"),
    ("sltnet.classifier.train", "classifier_train", ["--workers", "-1"],
     "argument --workers: must be an integer >= 0, got '-1'"),
    ("sltnet.localizer.train", "localizer_train", ["--alpha", "2"], "argument --alpha: must be a number in [0, 1], "
                                                                     "got '2'"),
    ("sltnet.regressor.train", "regressor_train", ["--momentum", "1"],
     "argument --momentum: must be a number in [0, 1), got '1'"),
    ("spol.seg.test", "seg_test", ["--cam-curve-interval", "0"],
     "argument --cam-curve-interval: must be a number in (0, 1], got '0'"),
    ("sltnet.localizer.test", "localizer_test", ["--iou-threshold", "1.5"],
     "argument --iou-threshold: must be a number in (0, 1), got '1.5'"),
    ("sltnet.localizer.test", "localizer_test", ["--box-threshold", "nan"],
     "argument --box-threshold: must be a number in [0, 1] or 'best', got 'nan'"),
    ("spol.cam.train", "cam_train", ["--resize-size", "64", "--input-size", "72"],
     "--input-size 72 is larger than --resize-size 64: the crop is cut from the resized image, so it must fit in it"),
    # the crop given, the resize the backbone's default (vgg16: 256): checked once the defaults are derived
    ("sltnet.localizer.train", "localizer_train", ["--input-size", "300"],
     "--input-size 300 is larger than --resize-size 256"),
    ("spol.cam.test", "cam_test", ["--band", "0.6", "0.2"], "--band 0.6 0.2: the first value must not be larger"),
    ("spol.cls.train", "cls_train", ["--split", "val"], "--split val: the 'cub' layout has the splits train and test"),
    ("sltnet.classifier.test", "classifier_test", ["--layout", "ilsvrc"],  # its default split, test
     "--split test: the 'ilsvrc' layout has the splits train and val"),
])
def test_an_option_out_of_range_is_one_line_before_any_work(tiny_cub, tmp_path, capsys, module, stage, argv,
                                                            message):
    out = tmp_path / "run"
    before = previous_run(out)
    line = stage_error(capsys, module, stage, ["--data-root", tiny_cub, "--output-dir", out, *SPOL_DATA, *argv])
    assert line.startswith("error: ") and message in line, line
    assert tree_hash(out) == before and sorted(p.name for p in out.iterdir()) == ["log.jsonl", "notes.txt"]


def test_an_option_out_of_range_on_the_command_line_and_in_a_config_file(tiny_cub, tmp_path):
    out = tmp_path / "run"
    before = previous_run(out)
    line = one_error(run([sys.executable, "spol/cls/train.py", "--data-root", str(tiny_cub), "--output-dir", str(out),
                          "--epochs", "0"]))
    assert line == "error: argument --epochs: must be an integer >= 1, got '0' (see spol/cls/train.py --help)"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("pretrained: none\ncls_train:\n  epochs: 0\n")
    line = one_error(run([sys.executable, "-m", "spol.cls.train", "--config", str(cfg), "--data-root", str(tiny_cub),
                          "--output-dir", str(out)]))
    assert line == f"error: {cfg}:3: option 'epochs': must be an integer >= 1, got '0'"
    assert tree_hash(out) == before


def test_top_k_larger_than_the_class_count_is_an_error_not_clipped(tiny_cub, tmp_path, capsys):
    out = tmp_path / "loc"
    before = previous_run(out)
    line = stage_error(capsys, "sltnet.localizer.train", "localizer_train",
                       ["--data-root", tiny_cub, "--output-dir", out, *SPOL_DATA, "--top-k", "3"])
    assert line == ("error: --top-k 3 is larger than the dataset's 2 classes: K of SMT and top-K ACAM must be at "
                    "most 2")
    assert tree_hash(out) == before


@pytest.mark.parametrize("extra,message", [
    (["--cam-curve-interval", "0"], "argument --cam-curve-interval: must be a number in (0, 1], got '0'"),
    (["--cam-curve-interval", "2"], "argument --cam-curve-interval: must be a number in (0, 1], got '2'"),
    (["--threshold", "2"], "argument --threshold: must be a number in [0, 1], got '2'"),
    (["--iou-threshold", "1.5"], "argument --iou-threshold: must be a number in (0, 1), got '1.5'"),
    (["--protocol", "spol", "--threshold", "0.2", "--resize-size", "16"],
     "--input-size 32 is larger than --resize-size 16: protocol spol cuts the input from the resized image"),
])
def test_evaluator_options_out_of_range(tiny_cub, tmp_path, capsys, extra, message):
    from utils.evaluation.evaluate import cli
    from utils.data.layouts import load_records

    maps = save_maps(tmp_path / "maps", load_records(tiny_cub, "cub", "test"), 32)
    out = tmp_path / "eval.json"
    line = in_process(capsys, cli, evaluate_args(tiny_cub, "cub", "test", maps, out, *extra))
    assert line.startswith("error: ") and message in line, line
    assert not out.exists()


def test_evaluator_option_out_of_range_as_a_user_runs_it(tiny_cub, tmp_path):
    line = one_error(run([sys.executable, "-m", "utils.evaluation", *evaluate_args(
        tiny_cub, "cub", "test", tmp_path, tmp_path / "e.json", "--threshold", "2")]))
    assert line == ("error: argument --threshold: must be a number in [0, 1], got '2' (see python -m utils.evaluation "
                    "--help)")


def test_a_box_file_line_that_is_no_box_as_a_user_runs_it(tiny_cub, tmp_path):
    """``--boxes``: a NaN, an inverted box (x y w h lines), an image not in the split: one line naming the
    file and line, exit 2, nothing written; an image without a box is a warning and a miss."""
    from utils.data.layouts import load_records

    ids = [r.image_id for r in load_records(tiny_cub, "cub", "test")]
    boxes, out = tmp_path / "boxes.txt", tmp_path / "e.json"
    argv = ["-m", "utils.evaluation", "--data-root", str(tiny_cub), "--layout", "cub", "--split", "test",
            "--boxes", str(boxes), "--protocol", "wsol", "--input-size", "32", "--output", str(out)]
    for text, line, message in ((f"{ids[0]} 1 2 20 12\n{ids[1]} 2 nan 30 20\n", 2, "is not finite"),
                                (f"{ids[0]} 12 2 8 10\n", 1, "inverted box 12 2 8 10"),
                                (f"{ids[0]} 1 2 20 12\nother/x.jpg 1 2 3 4\n", 2, "not in split 'test'")):
        boxes.write_text(text)
        got = one_error(run([sys.executable, *argv]))
        assert got.startswith(f"error: {boxes}:{line}: ") and message in got, got
        assert not out.exists()
    boxes.write_text(f"{ids[0]} 1 2 20 12\n")
    proc = run([sys.executable, *argv])
    assert proc.returncode == 0 and "1 of the 2 images of split 'test' have no box" in proc.stderr
    assert '"images_without_box": [' in out.read_text()


def test_pretraining_steps_zero_and_a_resource_dir_that_is_a_file(tmp_path, capsys):
    import network.pretrain as P

    line = in_process(capsys, P.cli, ["--steps", "0", "--resource-dir", str(tmp_path)])
    assert line == "error: argument --steps: must be an integer >= 1, got '0' (see python -m network.pretrain --help)"
    blocker = tmp_path / "resource"
    blocker.write_text("a file")
    line = in_process(capsys, P.cli, ["--steps", "1", "--resource-dir", str(blocker)])
    assert line == f"error: {blocker}: --resource-dir: is a file, not a folder"
    assert blocker.read_text() == "a file" and sorted(p.name for p in tmp_path.iterdir()) == ["resource"]


# ----------------------------------------------------------------------------- config files
@pytest.mark.parametrize("text,where,message", [
    ("epochs: 1\ncls_train:\n  epochs: 2\nseed: 0\ncls_train:\n  lr: 0.1\n", 5,
     "section 'cls_train' appears twice (first on line 2): YAML would keep the last one only"),
    ("epochs: 1\nseed: 3\nepochs: 2\n", 3, "key 'epochs' appears twice (first on line 1)"),
    ("cls_train:\n  batch_size: 2\n  batch-size: 4\n", 3,
     "key 'batch-size' sets the same option as 'batch_size' on line 2: give it once"),
    ("seed: 0\n\tepochs: 2\n", 2, "invalid YAML"),
])
def test_a_config_key_or_section_given_twice_or_a_tab_names_file_and_line(tiny_cub, tmp_path, capsys, text, where,
                                                                         message):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    out = tmp_path / "run"
    before = previous_run(out)
    line = stage_error(capsys, "spol.cls.train", "cls_train", ["--config", cfg, "--data-root", tiny_cub,
                                                               "--output-dir", out])
    assert line.startswith(f"error: {cfg}:{where}: {message}"), line
    assert tree_hash(out) == before


def test_a_config_that_is_not_utf8_names_file_and_line(tiny_cub, tmp_path):
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes("seed: 0\n# r\xe9glages\nepochs: 1\n".encode("latin-1"))
    line = one_error(run([sys.executable, "spol/cam/train.py", "--config", str(cfg), "--data-root", str(tiny_cub)]))
    assert line == f"error: {cfg}:2: not a UTF-8 text file (byte 0xe9): save it as UTF-8"


def test_demo_config_with_a_tab_or_an_unknown_key_is_one_line(tmp_path):
    cfg = tmp_path / "demo.yaml"
    cfg.write_text("demo:\n  classes: 3\n\tseed: 1\n")
    out = tmp_path / "out"
    line = one_error(run([sys.executable, "demo.py", "--tiny", "--device", "cpu", "--config", str(cfg),
                          "--output-dir", str(out)]))
    assert line.startswith(f"error: {cfg}:3: invalid YAML: found character '\\t'") and not out.exists()
    from demo_birds.settings import get_args_parser, resolve_settings

    cfg.write_text("demo:\n  families: 3\n  families_: 4\n")
    with pytest.raises(DataError, match=rf"{cfg}:3: unknown key 'families_' in 'demo:'"):
        resolve_settings(get_args_parser().parse_args(["--config", str(cfg)]))
    cfg.write_text("demo:\n  families: 0\n")
    with pytest.raises(DataError, match=rf"{cfg}:2: option 'families': must be an integer >= 1, got '0'"):
        resolve_settings(get_args_parser().parse_args(["--config", str(cfg)]))


# ----------------------------------------------------------------------------- output folders and data roots
def test_an_output_folder_that_is_a_file_under_a_file_or_read_only(tiny_cub, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("a user's file")
    base = ["--data-root", tiny_cub, *SPOL_DATA, "--epochs", "1"]
    line = stage_error(capsys, "spol.cls.train", "cls_train", [*base, "--output-dir", blocker])
    assert line == f"error: {blocker}: --output-dir: is a file, not a folder"
    line = stage_error(capsys, "spol.cls.train", "cls_train", [*base, "--output-dir", blocker / "run"])
    assert line == f"error: {blocker}: --output-dir {blocker / 'run'}: lies under this file, not a folder"
    assert blocker.read_text() == "a user's file"
    if os.geteuid() != 0:  # a folder without write permission
        locked = tmp_path / "locked"
        before = previous_run(locked)
        locked.chmod(0o555)
        try:
            line = stage_error(capsys, "spol.cls.train", "cls_train", [*base, "--output-dir", locked])
        finally:
            locked.chmod(0o755)
        assert line == f"error: {locked}: --output-dir: this folder is not writable (permission denied)"
        assert tree_hash(locked) == before
    elif os.path.isdir("/sys/kernel"):  # root writes anywhere but on a read-only file system
        line = stage_error(capsys, "spol.cls.train", "cls_train", [*base, "--output-dir", "/sys/kernel"])
        assert line.startswith("error: /sys/kernel: cannot write in this output folder (")
        line = stage_error(capsys, "spol.cls.train", "cls_train", [*base, "--output-dir", "/sys/kernel/wsol_run"])
        assert line.startswith("error: /sys/kernel/wsol_run: cannot write in this output folder (")
    else:
        pytest.skip("no folder this user cannot write")


def test_a_data_root_that_is_a_symlink_loop_is_one_line(tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    out = tmp_path / "run"
    line = stage_error(capsys, "spol.cls.train", "cls_train", ["--data-root", loop, "--output-dir", out, *SPOL_DATA])
    assert line == f"error: {loop}: dataset root is a loop of symbolic links (layout 'cub')"


@pytest.mark.parametrize("where", ["equal", "inside", "around"])
def test_an_output_folder_that_is_inside_or_around_the_data_is_refused(tmp_path, capsys, where):
    data = make_tiny_cub(tmp_path / "data" / "CUB")
    out = {"equal": data, "inside": data / "runs" / "cls", "around": tmp_path / "data"}[where]
    before = tree_hash(tmp_path / "data")
    for extra in ([], ["--overwrite"]):  # --overwrite would have moved the dataset aside
        line = stage_error(capsys, "spol.cls.train", "cls_train",
                           ["--data-root", data, "--output-dir", out, *SPOL_DATA, *extra])
        what = {"equal": "is the dataset folder", "inside": "lies inside the dataset folder",
                "around": "holds the dataset folder"}[where]
        assert line.startswith(f"error: {out}: --output-dir {what} --data-root {data}: a run never writes")
    assert tree_hash(tmp_path / "data") == before
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["CUB"]  # nothing moved aside


def test_demo_output_folder_that_is_a_file_or_holds_its_data(tmp_path):
    """demo.py checks its own folders before it generates, pretrains or trains anything."""
    import demo

    blocker = tmp_path / "blocker"
    blocker.write_text("a user's file")
    for argv, message in (
            (["--output-dir", str(blocker)], f"{blocker}: --output-dir: is a file, not a folder"),
            (["--output-dir", str(tmp_path / "out"), "--data-out", str(tmp_path / "out" / "birds")],
             f"{tmp_path / 'out'}: --output-dir holds the dataset folder --data-root {tmp_path / 'out' / 'birds'}")):
        args = demo.get_args_parser().parse_args(["--tiny", "--device", "cpu", *argv])
        with pytest.raises(DataError) as info:
            demo.main(args)
        assert str(info.value).startswith(message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"] and blocker.read_text() == "a user's file"


def test_overwrite_moves_aside_only_a_run_this_project_wrote(tiny_cub, tmp_path, capsys):
    mine = tmp_path / "models"
    mine.mkdir()
    (mine / "model.pth").write_bytes(b"a user's weights")
    (mine / "photo.jpg").write_bytes(b"holiday")
    before = tree_hash(mine)
    for extra, says in (([], "a training run would replace it"),
                        (["--overwrite"], "--overwrite moves aside only a run this project wrote")):
        line = stage_error(capsys, "spol.cls.train", "cls_train",
                           ["--data-root", tiny_cub, "--output-dir", mine, *SPOL_DATA, "--backbone", "resnet18",
                            "--resize-size", "32", "--input-size", "32", *extra])
        assert line == (f"error: {mine}: holds model.pth that no run of this project wrote (no training checkpoint, "
                        f"no args.yaml beside it): {says}; use another --output-dir")
    assert tree_hash(mine) == before and not (mine / ".lock").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CUB_200_2011", "models"]


def test_generator_and_evaluator_outputs_that_cannot_be_written(tiny_cub, tmp_path, capsys):
    from utils.evaluation.evaluate import cli as evaluate_cli
    from utils.data.generate import cli as generate_cli
    from utils.data.layouts import load_records

    blocker = tmp_path / "blocker"
    blocker.write_text("a user's file")
    small = ["--classes", "1", "--train-per-class", "1", "--test-per-class", "1", "--size", "16"]
    assert in_process(capsys, generate_cli, ["--out", str(blocker), *small]) == \
        f"error: {blocker}: --out: is a file, not a folder"
    assert in_process(capsys, generate_cli, ["--out", str(blocker / "birds"), *small]) == \
        f"error: {blocker}: --out {blocker / 'birds'}: lies under this file, not a folder"
    maps = save_maps(tmp_path / "maps", load_records(tiny_cub, "cub", "test"), 32)
    folder = tmp_path / "results"
    folder.mkdir()
    line = in_process(capsys, evaluate_cli, evaluate_args(tiny_cub, "cub", "test", maps, folder))
    assert line == f"error: {folder}: --output: is a folder; --output names a file"
    line = in_process(capsys, evaluate_cli, evaluate_args(tiny_cub, "cub", "test", maps, blocker / "e.json"))
    assert line == f"error: {blocker}: --output {blocker / 'e.json'}: lies under this file, not a folder"
    line = in_process(capsys, evaluate_cli, evaluate_args(tiny_cub, "cub", "test", maps, tiny_cub / "e.json"))
    assert line.startswith(f"error: {tiny_cub / 'e.json'}: --output lies inside the dataset folder --data-root")
    assert blocker.read_text() == "a user's file" and not any(folder.iterdir())
    assert not (tiny_cub / "e.json").exists()


# ----------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_ends_with_one_line_naming_the_checkpoint_and_the_run_resumes(tmp_path):
    out, flag = tmp_path / "run", tmp_path / "paused"
    argv = [sys.executable, str(TOY), "--output-dir", str(out), "--device", "cpu", "--epochs", "1", "--samples", "8",
            "--save-every-steps", "1"]
    proc = subprocess.Popen([*argv, "--pause-after-step", "1", "--pause-file", str(flag)], env=env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not flag.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert flag.exists()
        proc.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal sends
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert proc.returncode == 130 and "Traceback" not in err and len(lines) == 1, err[-2000:]
    assert lines[0] == (f"error: {out / 'checkpoint.pth'}: interrupted (Ctrl-C): the same command resumes the run "
                        "from this checkpoint (epoch 0, step 1, global step 1)")
    resumed = run(argv)
    assert resumed.returncode == 0 and f"from {out / 'checkpoint.pth'}: epoch 0 step 1" in resumed.stdout


def test_ctrl_c_in_a_test_step_puts_its_previous_outputs_back(tiny_cub, tmp_path, capsys, monkeypatch):
    import torch

    from spol.cam import test as cam_test
    from spol.model import CAMModel
    from utils.engine.checkpoint import save_checkpoint

    out = tmp_path / "cam"
    torch.manual_seed(0)
    save_checkpoint(out / "model.pth", CAMModel(2, pretrained="none").state_dict())
    argv = ["--data-root", tiny_cub, "--output-dir", out, "--device", "cpu", "--workers", "0", "--resize-size", "32",
            "--batch-size", "1", "--mask-workers", "1"]
    stage_warnings(capsys, "spol.cam.test", "cam_test", argv)
    before = tree_hash(out)
    assert "pseudo_masks.json" in before
    calls = {"n": 0}
    real = cam_test.cam_step

    def interrupted(model, batch):  # Ctrl-C on the second image, after the first mask was written
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(model, batch)

    monkeypatch.setattr(cam_test, "cam_step", interrupted)
    line = stage_error(capsys, "spol.cam.test", "cam_test", [*argv, "--seed", "3"], code=130)
    assert line == (f"error: {out}: interrupted (Ctrl-C): this test step's previous outputs are back as they were; "
                    "the same command runs it again")
    assert tree_hash(out) == before


def test_ctrl_c_while_generating_leaves_no_partial_dataset(tmp_path, capsys, monkeypatch):
    import utils.data.generate as G

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(G, "_write_all", interrupted)
    line = in_process(capsys, G.cli, ["--out", str(tmp_path / "birds"), "--classes", "1", "--size", "16"], code=130)
    assert line == (f"error: {tmp_path / 'birds'}: interrupted (Ctrl-C): nothing was written there; the same command "
                    "generates the dataset again")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- minor
def test_labels_without_a_class_list_that_leave_classes_unseen_are_one_warning(tmp_path, capsys):
    from utils.data.layouts import load_records, num_classes

    images = [(1, "a/x.jpg", 1, 1, (1.0, 1.0, 4.0, 4.0)), (2, "c/y.jpg", 3, 1, (1.0, 1.0, 4.0, 4.0)),
              (3, "c/z.jpg", 3, 0, (1.0, 1.0, 4.0, 4.0))]
    root = make_tiny_cub(tmp_path / "cub", images=images, with_classes=False)
    capsys.readouterr()
    records = load_records(root, "cub", "train")
    load_records(root, "cub", "test")
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert num_classes(records) == 3
    assert warnings == [f"warning: {root / 'image_class_labels.txt'}: no classes.txt: 3 classes counted up to the "
                        "largest label, 1 without any image (2): add classes.txt to fix the class list"]
    meta = make_tiny_metadata(tmp_path / "meta", splits={"train": [("i/a.png", 0, (8, 8), None),
                                                                   ("i/b.png", 3, (8, 8), None)]})
    assert num_classes(load_records(meta, "metadata", "train")) == 4
    load_records(meta, "metadata", "train")  # once per process
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert warnings == [f"warning: {meta / 'metadata' / '*' / 'class_labels.txt'}: no class_names.txt: 4 classes "
                        "counted up to the largest label, 2 without any image (1, 2): add class_names.txt to fix the "
                        "class list"]


def test_a_prediction_for_an_image_not_in_the_split_is_one_warning(tiny_cub, tmp_path, capsys):
    from utils.evaluation.evaluate import cli
    from utils.data.layouts import load_records
    from utils.evaluation.handoff import write_predictions

    records = load_records(tiny_cub, "cub", "test")
    maps = save_maps(tmp_path / "maps", records, 32)
    predictions = tmp_path / "predictions.csv"
    write_predictions(predictions, [r.image_id for r in records] + ["999.Other/x.jpg"],
                      [r.label for r in records] + [0], [[r.label] for r in records] + [[0]])
    capsys.readouterr()
    cli(evaluate_args(tiny_cub, "cub", "test", maps, tmp_path / "e.json", "--predictions", str(predictions)))
    err = capsys.readouterr().err.splitlines()
    assert err == [f"warning: {predictions}: 1 prediction(s) for images not in the evaluated split, not scored "
                   "(e.g. 999.Other/x.jpg)"]
