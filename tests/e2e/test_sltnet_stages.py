"""SLT-Net stages end to end on tiny generated data (CPU, random init), backbones, upstream-file errors."""
import csv
import json

import numpy as np
import pytest
import torch

from utils.engine.checkpoint import MissingFileError
from utils.config import parse_args
from utils.data.layouts import load_records
from utils.errors import DataError
from utils.data.generate import generate_dataset

SIZE = ["--resize-size", "72", "--input-size", "64"]


@pytest.fixture(scope="module")
def birds(tmp_path_factory):
    root = tmp_path_factory.mktemp("sltnet") / "birds"
    return generate_dataset(root, num_classes=3, train_per_class=3, test_per_class=2, image_size=64, seed=0)


@pytest.fixture
def run_stage(birds, tmp_path, monkeypatch):
    """run_stage(module, stage, *argv): parse like the command line and call main()."""
    import importlib

    monkeypatch.setattr("utils.paths.OUTPUT_ROOT", tmp_path / "output")  # utils.paths.stage_dir
    torch.set_num_threads(1)
    common = ["--data-root", str(birds), "--pretrained", "none", "--device", "cpu", "--workers", "0",
              "--batch-size", "3", "--dataset", "birds"]

    def run(module, stage, *argv):
        script = importlib.import_module(module)
        return script.main(parse_args(script.get_args_parser(), common + list(argv), stage=stage))
    run.out = tmp_path / "output" / "sltnet" / "birds" / "vgg16"
    return run


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_three_stages_end_to_end(run_stage, birds):
    out = run_stage.out
    train_ids = [r.image_id for r in load_records(birds, "cub", "train")]
    test_ids = [r.image_id for r in load_records(birds, "cub", "test")]
    # 1. localizer + regressor, jointly (SMT + ACAM + VST + L_REG all on), then its own evaluation
    run_stage("sltnet.localizer.train", "localizer_train", *SIZE, "--top-k", "2", "--epochs", "1",
              "--max-steps-per-epoch", "2")
    assert (out / "localizer" / "model.pth").is_file()
    log = [json.loads(line) for line in (out / "localizer" / "log.jsonl").read_text().splitlines()]
    assert {"loss_cls", "loss_vst", "loss_reg"} <= set(log[-1])
    from sltnet.localizer.train import get_args_parser       # args.yaml repeats the run
    again = parse_args(get_args_parser(), ["--config", str(out / "localizer" / "args.yaml")], stage="localizer_train")
    assert (again.top_k, again.input_size, again.vst) == (2, 64, True)
    assert (again.box_scale, again.box_stride, again.box_rule) == ("stride", 16.0, "zhou")   # VGG16 conv5: m = 16
    run_stage("sltnet.localizer.test", "localizer_test", *SIZE, "--top-k", "2", "--cam-curve-interval", "0.1")
    metrics = json.loads((out / "localizer" / "test" / "metrics.json").read_text())
    assert metrics["num_images"] == len(test_ids) and 0 <= metrics["gt_known_loc"] <= 100
    assert 0 <= metrics["maxboxacc_v2"] <= 100 and 0 <= metrics["pxap"] <= 100
    full = json.loads((out / "localizer" / "test" / "evaluate.json").read_text())
    # the evaluator boxes the saved maps by Choe et al.'s rule: equal to ours under that rule
    assert full["gt_known_loc"] == metrics["gt_known_loc_choe_rule"] and metrics["box_rule"] == "zhou"
    rows = _csv_rows(out / "localizer" / "test" / "boxes.csv")
    assert rows[0] == ["image_id", "x0", "y0", "x1", "y1"] and [r[0] for r in rows[1:]] == test_ids
    scoremap = np.load(out / "localizer" / "test" / "scoremaps" / (test_ids[0][:-4] + ".npy"))
    assert scoremap.shape == (64, 64) and 0 <= scoremap.min() and scoremap.max() <= 1
    # pseudo boxes on the train split feed the standalone regressor
    run_stage("sltnet.localizer.test", "localizer_test", *SIZE, "--top-k", "2", "--split", "train",
              "--no-scoremaps", "--no-maxboxacc")
    assert [r[0] for r in _csv_rows(out / "localizer" / "train" / "boxes.csv")[1:]] == train_ids
    run_stage("sltnet.regressor.train", "regressor_train", *SIZE, "--epochs", "1", "--max-steps-per-epoch", "1")
    assert (out / "regressor" / "model.pth").is_file()
    # 2. classifier: fine-tune, then ten-crop predictions
    run_stage("sltnet.classifier.train", "classifier_train", *SIZE, "--epochs", "1", "--max-steps-per-epoch", "1")
    run_stage("sltnet.classifier.test", "classifier_test", *SIZE)
    for stage in ("classifier", "classifier/test"):
        module = "sltnet.classifier." + ("test" if "/" in stage else "train")
        parse_args(__import__(module, fromlist=["x"]).get_args_parser(),
                   ["--config", str(out / stage / "args.yaml")], stage="classifier_x")
    rows = _csv_rows(out / "classifier" / "test" / "predictions.csv")
    assert rows[0] == ["image_id", "label", "pred_top5", "top1_correct", "top5_correct"] and len(rows) == 1 + len(test_ids)
    # 3. final evaluation: jointly trained regressor, and the standalone one
    run_stage("sltnet.regressor.test", "regressor_test", *SIZE)
    final = json.loads((out / "regressor" / "test" / "metrics.json").read_text())
    assert final["num_images"] == len(test_ids) and (final["box_scale"], final["box_stride"]) == ("stride", 16.0)
    assert final["top1_loc"] <= final["top5_loc"] <= final["gt_known_loc"] + 1e-9
    assert (out / "regressor" / "test" / "grid.png").stat().st_size > 0
    run_stage("sltnet.regressor.test", "regressor_test", *SIZE, "--regressor-source", "regressor",
              "--output-dir", str(out / "final_standalone"))
    assert json.loads((out / "final_standalone" / "metrics.json").read_text())["num_images"] == len(test_ids)


@pytest.mark.parametrize("scale,p", [("stride", [1.0, 0.5, 3.0, 2.5]), ("input", [0.25, 0.125, 0.75, 0.625])])
def test_regressor_prediction_goes_back_to_pixels_as_trained(run_stage, birds, scale, p):
    """A regressor that always predicts p: the final test must write the box p * m (stride, m = 16 from
    the localizer's boxes.json, Sec. 3.1) or p * 64 (input size) = (16, 8, 48, 40) in both cases."""
    from utils.evaluation.handoff import write_boxes_csv, write_predictions

    out = run_stage.out
    train = load_records(birds, "cub", "train")
    test = load_records(birds, "cub", "test")
    write_boxes_csv(out / "localizer" / "train" / "boxes.csv", [r.image_id for r in train],
                    [[8, 8, 40, 40]] * len(train), meta={"protocol": "wsol", "input_size": 64, "resize_size": 72, "downsampling_factor": 16.0})
    run_stage("sltnet.regressor.train", "regressor_train", *SIZE, "--epochs", "1", "--max-steps-per-epoch", "1",
              "--box-scale", scale, "--regressor-hidden", "8")
    again = parse_args(__import__("sltnet.regressor.train", fromlist=["x"]).get_args_parser(),
                       ["--config", str(out / "regressor" / "args.yaml")], stage="regressor_train")
    assert (again.box_scale, again.box_stride) == (scale, 16.0 if scale == "stride" else None)
    state = torch.load(out / "regressor" / "model.pth", weights_only=True)
    state = state.get("model", state)
    last = max(k for k in state if k.startswith("fc.") and k.endswith(".bias"))
    state[last.replace("bias", "weight")].zero_()
    state[last].copy_(torch.tensor(p))
    torch.save(state, out / "regressor" / "model.pth")
    write_predictions(out / "classifier" / "test" / "predictions.csv", [r.image_id for r in test],
                      [r.label for r in test], [[r.label] for r in test])
    run_stage("sltnet.regressor.test", "regressor_test", *SIZE, "--regressor-source", "regressor",
              "--regressor-hidden", "8")
    rows = _csv_rows(out / "regressor" / "test" / "boxes.csv")[1:]
    assert len(rows) == len(test) and {tuple(float(v) for v in r[1:]) for r in rows} == {(16.0, 8.0, 48.0, 40.0)}
    with pytest.raises(DataError, match="trained with box_scale"):
        run_stage("sltnet.regressor.test", "regressor_test", *SIZE, "--regressor-source", "regressor",
                  "--regressor-hidden", "8", "--box-scale", "input" if scale == "stride" else "stride")


def test_missing_upstream_files_name_the_stage_to_run(run_stage):
    with pytest.raises(MissingFileError, match="sltnet/localizer/train.py"):
        run_stage("sltnet.localizer.test", "localizer_test", *SIZE)
    with pytest.raises(DataError, match="sltnet/localizer/test.py"):
        run_stage("sltnet.regressor.train", "regressor_train", *SIZE)
    with pytest.raises(DataError, match="sltnet/classifier/test.py"):
        run_stage("sltnet.regressor.test", "regressor_test", *SIZE)
    with pytest.raises(MissingFileError, match="sltnet/classifier/train.py"):
        run_stage("sltnet.classifier.test", "classifier_test", *SIZE)


def test_config_files_parse_for_every_stage():
    """Every configs/sltnet_*.yaml is accepted by every stage (unknown keys would be errors)."""
    import importlib

    from utils.paths import CONFIG_DIR

    files = sorted(CONFIG_DIR.glob("sltnet_*.yaml"))
    assert len(files) == 8
    stages = {"localizer_train": "sltnet.localizer.train", "localizer_test": "sltnet.localizer.test",
              "regressor_train": "sltnet.regressor.train", "regressor_test": "sltnet.regressor.test",
              "classifier_train": "sltnet.classifier.train", "classifier_test": "sltnet.classifier.test"}
    for path in files:
        for stage, module in stages.items():
            args = parse_args(importlib.import_module(module).get_args_parser(), ["--config", str(path)], stage=stage)
            assert args.backbone in path.name
    args = parse_args(importlib.import_module("sltnet.localizer.train").get_args_parser(),
                      ["--config", "configs/sltnet_imagenet_inception_v3.yaml", "--beta", "3"], stage="localizer_train")
    assert (args.alpha, args.top_k, args.epochs, args.lr, args.batch_size, args.beta) == (0.2, 100, 2, 2e-4, 16, 3.0)
    assert (args.resize_size, args.input_size, args.layout) == (320, 299, "ilsvrc")


def test_bad_input_ends_a_script_with_one_error_line(tmp_path):
    # run as a user would: the script's __main__ turns a DataError into one 'error:' line, exit 2
    import subprocess
    import sys

    from utils.data.generate import generate_dataset as make
    from utils.paths import REPO_ROOT

    root = make(tmp_path / "birds", num_classes=2, train_per_class=2, test_per_class=1, image_size=32, seed=1)
    proc = subprocess.run([sys.executable, "test.py", "--data-root", str(root), "--device", "cpu",
                           "--output-dir", str(tmp_path / "reg"), "--localizer-dir", str(tmp_path / "none"),
                           "--classifier-dir", str(tmp_path / "none")],
                          cwd=REPO_ROOT / "sltnet" / "regressor", capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "first" in lines[0], lines


def test_table6_configs_train_every_regressor_on_one_localizers_boxes():
    """Sec. 4.2 / Table 6: "we choose the localizer with InceptionV3 to generate pseudo boxes for the
    ILSVRC2012 dataset and the localizer with VGG16 to generate pseudo boxes for the CUB dataset".
    The configs of Tables 1-4 and 7 train each backbone's regressor alone on those boxes and test it."""
    import importlib

    from sltnet.options import resolve_args
    from utils.paths import CONFIG_DIR, OUTPUT_ROOT

    train = importlib.import_module("sltnet.regressor.train").get_args_parser
    test = importlib.import_module("sltnet.regressor.test").get_args_parser
    for path in sorted(CONFIG_DIR.glob("sltnet_*.yaml")):
        dataset, source = ("cub", "vgg16") if "_cub_" in path.name else ("imagenet", "inception_v3")
        args = resolve_args(parse_args(train(), ["--config", str(path)], stage="regressor_train"), "regressor")
        assert args.pseudo_box_backbone == source, path.name
        assert args.localizer_dir == str(OUTPUT_ROOT / "sltnet" / dataset / source / "localizer"), path.name
        assert args.output_dir == str(OUTPUT_ROOT / "sltnet" / dataset / args.backbone / "regressor"), path.name
        final = parse_args(test(), ["--config", str(path)], stage="regressor_test")
        assert final.regressor_source == "regressor", path.name
    # an explicit --localizer-dir still wins over the config's pseudo_box_backbone
    args = resolve_args(parse_args(train(), ["--config", "configs/sltnet_imagenet_vgg16.yaml", "--localizer-dir", "/x"],
                                   stage="regressor_train"), "regressor")
    assert args.localizer_dir == "/x"


def test_output_stride_goes_from_a_config_to_the_test_steps(run_stage, birds, tmp_path, monkeypatch, capsys):
    """``output_stride: 8`` under a stage mapping of a YAML config reaches the localizer's training;
    its test steps, given no --output-stride, build the same network from the run's args.yaml (layer3
    CAMs at stride 8: m = 8 in boxes.json, where the default output stride 32 would give 16)."""
    import yaml

    from utils.engine import rundir
    from utils.errors import RunError
    from utils.evaluation.handoff import write_predictions

    config = tmp_path / "os8.yaml"
    config.write_text("localizer_train:\n  backbone: resnet18\n  cam_feature: layer3\n  share_backbone: true\n"
                      "  output_stride: 8\n")
    run_stage("sltnet.localizer.train", "localizer_train", "--config", str(config), *SIZE, "--top-k", "2",
              "--epochs", "1", "--max-steps-per-epoch", "1", "--no-vst")
    loc = tmp_path / "output" / "sltnet" / "birds" / "resnet18" / "localizer"
    trained = yaml.safe_load((loc / "args.yaml").read_text())
    assert (trained["output_stride"], trained["box_stride"]) == (8, 8.0)
    # the test steps as run_cli starts them (utils.engine.rundir reads the training run's options)
    monkeypatch.setitem(rundir.current_stage, "name", "localizer_test")
    run_stage("sltnet.localizer.test", "localizer_test", "--backbone", "resnet18", *SIZE, "--top-k", "2",
              "--no-scoremaps", "--no-maxboxacc")
    assert "--output-stride 8" in capsys.readouterr().err
    assert json.loads((loc / "test" / "boxes.json").read_text())["downsampling_factor"] == 8.0
    assert yaml.safe_load((loc / "test" / "args.yaml").read_text())["output_stride"] == 8
    with pytest.raises(RunError, match="the training run used --output-stride 8, this test step was given "
                                       "--output-stride 32"):
        run_stage("sltnet.localizer.test", "localizer_test", "--backbone", "resnet18", "--output-stride", "32",
                  *SIZE, "--output-dir", str(tmp_path / "refused"))
    test = load_records(birds, "cub", "test")
    write_predictions(tmp_path / "output" / "sltnet" / "birds" / "resnet18" / "classifier" / "test" / "predictions.csv",
                      [r.image_id for r in test], [r.label for r in test], [[r.label] for r in test])
    monkeypatch.setitem(rundir.current_stage, "name", "regressor_test")
    run_stage("sltnet.regressor.test", "regressor_test", "--backbone", "resnet18", *SIZE, "--grid-images", "0")
    final = loc.parent / "regressor" / "test"
    assert yaml.safe_load((final / "args.yaml").read_text())["output_stride"] == 8
    assert json.loads((final / "metrics.json").read_text())["box_stride"] == 8.0


def test_output_stride_on_a_backbone_without_it_is_one_error_line(birds, tmp_path, capsys):
    from sltnet.localizer import train
    from utils.engine.rundir import run_cli

    with pytest.raises(SystemExit) as info:
        run_cli(train.main, train.get_args_parser, "localizer_train",
                ["--data-root", str(birds), "--backbone", "vgg16", "--output-stride", "8", "--device", "cpu",
                 "--output-dir", str(tmp_path / "loc")])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: --output-stride 8: backbone vgg16 has output stride 32 only "
                                               "(16 and 8: resnet18, resnet50)")
    assert not (tmp_path / "loc").exists()
