"""SLT-Net stages end to end on tiny generated data (CPU, random init), backbones, upstream-file errors."""
import csv
import json

import numpy as np
import pytest
import torch

from utils.errors import MissingFileError
from utils.config import parse_args
from utils.data.layouts import load_records
from utils.errors import DataError
from utils.data.generate import generate_dataset
from utils.evaluation.evaluate import evaluate_boxes

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
    # scored in memory; the saved maps read back from their folder give the same results, curves included
    from utils.evaluation.evaluate import evaluate_scoremaps
    assert evaluate_scoremaps(load_records(birds, "cub", "test"), out / "localizer" / "test" / "scoremaps", "wsol",
                              cam_curve_interval=0.1, threshold=metrics["box_threshold"], input_size=64,
                              resize_size=72, iou_compare=full["iou_compare"], split="test") == full
    rows = _csv_rows(out / "localizer" / "test" / "boxes.csv")
    assert rows[0] == ["image_id", "x0", "y0", "x1", "y1"] and [r[0] for r in rows[1:]] == test_ids
    # its boxes.csv holds the boxes it scored: python -m utils.evaluation --boxes gives its numbers
    test = load_records(birds, "cub", "test")
    again = evaluate_boxes(test, out / "localizer" / "test" / "boxes.csv", "wsol", input_size=64, resize_size=72)
    assert {k: again[k] for k in ("gt_known_loc", "box_acc_per_iou")} == {k: metrics[k] for k in
                                                                          ("gt_known_loc", "box_acc_per_iou")}
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
    for path in (out / "classifier" / "args.yaml", out / "classifier" / "test" / "test_args.yaml"):
        module = "sltnet.classifier." + ("test" if path.name == "test_args.yaml" else "train")
        parse_args(__import__(module, fromlist=["x"]).get_args_parser(), ["--config", str(path)], stage="classifier_x")
    assert json.loads((out / "classifier" / "test" / "metrics.json").read_text())["num_images"] == len(test_ids)
    rows = _csv_rows(out / "classifier" / "test" / "predictions.csv")
    assert rows[0] == ["image_id", "label", "pred_top5", "top1_correct", "top5_correct"] and len(rows) == 1 + len(test_ids)
    # 3. final evaluation: jointly trained regressor, and the standalone one
    run_stage("sltnet.regressor.test", "regressor_test", *SIZE)
    final = json.loads((out / "regressor" / "test" / "metrics.json").read_text())
    assert final["num_images"] == len(test_ids) and (final["box_scale"], final["box_stride"]) == ("stride", 16.0)
    assert final["top1_loc"] <= final["top5_loc"] <= final["gt_known_loc"] + 1e-9
    assert (out / "regressor" / "test" / "grid.png").stat().st_size > 0
    again = evaluate_boxes(test, out / "regressor" / "test" / "boxes.csv", "wsol", input_size=64, resize_size=72,
                           predictions=out / "classifier" / "test" / "predictions.csv")
    for key in ("gt_known_loc", "top1_loc", "top5_loc", "box_acc_per_iou", "box_acc_mean"):
        assert again[key] == final[key], key
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
    if scale == "stride":  # under the SPOL geometry too: boxes are scored without a map threshold
        run_stage("sltnet.regressor.test", "regressor_test", *SIZE, "--regressor-source", "regressor",
                  "--regressor-hidden", "8", "--protocol", "spol", "--output-dir", str(out / "regressor_spol"))
        spol = json.loads((out / "regressor_spol" / "metrics.json").read_text())
        assert (spol["protocol"], spol["num_images"], spol["num_counted"]) == ("spol", len(test), len(test))
    with pytest.raises(DataError, match="the training run used --box-scale"):
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

    from sltnet.options import resolve_defaults
    from utils.paths import CONFIG_DIR, OUTPUT_ROOT

    train = importlib.import_module("sltnet.regressor.train").get_args_parser
    test = importlib.import_module("sltnet.regressor.test").get_args_parser
    for path in sorted(CONFIG_DIR.glob("sltnet_*.yaml")):
        dataset, source = ("cub", "vgg16") if "_cub_" in path.name else ("imagenet", "inception_v3")
        args = resolve_defaults(parse_args(train(), ["--config", str(path)], stage="regressor_train"), "regressor")
        assert args.pseudo_box_backbone == source, path.name
        # the standalone regressor's head: a 4x4 grid and a linear output (docs/demo.md)
        assert (args.regressor_pool, args.regressor_grid, args.regressor_final_relu) == ("grid", 4, False), path.name
        assert args.localizer_dir == str(OUTPUT_ROOT / "sltnet" / dataset / source / "localizer"), path.name
        assert args.output_dir == str(OUTPUT_ROOT / "sltnet" / dataset / args.backbone / "regressor"), path.name
        final = parse_args(test(), ["--config", str(path)], stage="regressor_test")
        assert final.regressor_source == "regressor", path.name
    # an explicit --localizer-dir still wins over the config's pseudo_box_backbone
    args = resolve_defaults(parse_args(train(), ["--config", "configs/sltnet_imagenet_vgg16.yaml", "--localizer-dir",
                                                 "/x"], stage="regressor_train"), "regressor")
    assert args.localizer_dir == "/x"


def test_output_stride_goes_from_a_config_to_the_test_steps(run_stage, birds, tmp_path, capsys):
    """``output_stride: 8`` under a stage mapping of a YAML config reaches the localizer's training;
    its test steps, called in-process and given no --output-stride, build the same network from the
    run's args.yaml (layer3 CAMs at stride 8: m = 8 in boxes.json, where the default output stride 32
    would give 16)."""
    import yaml

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
    run_stage("sltnet.localizer.test", "localizer_test", "--backbone", "resnet18", *SIZE, "--top-k", "2",
              "--no-scoremaps", "--no-maxboxacc")
    assert "--output-stride 8" in capsys.readouterr().err
    assert json.loads((loc / "test" / "boxes.json").read_text())["downsampling_factor"] == 8.0
    assert yaml.safe_load((loc / "test" / "test_args.yaml").read_text())["output_stride"] == 8
    with pytest.raises(RunError, match="the training run used --output-stride 8, this test step was given "
                                       "--output-stride 32"):
        run_stage("sltnet.localizer.test", "localizer_test", "--backbone", "resnet18", "--output-stride", "32",
                  *SIZE, "--output-dir", str(tmp_path / "refused"))
    test = load_records(birds, "cub", "test")
    write_predictions(tmp_path / "output" / "sltnet" / "birds" / "resnet18" / "classifier" / "test" / "predictions.csv",
                      [r.image_id for r in test], [r.label for r in test], [[r.label] for r in test])
    run_stage("sltnet.regressor.test", "regressor_test", "--backbone", "resnet18", *SIZE, "--grid-images", "0")
    final = loc.parent / "regressor" / "test"
    assert yaml.safe_load((final / "test_args.yaml").read_text())["output_stride"] == 8
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


def test_new_options_reach_args_yaml_and_the_test_steps(run_stage, birds, tmp_path, capsys):
    """Every SLT-Net option that is not the paper's letter through the stages on tiny data: the joint
    training with all of them on (K from --top-k-ratio), the teacher boxes of the train split at the
    threshold chosen there, a grid-pooled regressor trained on them and its final test, which reads the
    head from args.yaml and refuses a contradicting one."""
    import yaml

    from sltnet.boxes import BEST_THRESHOLDS
    from utils.errors import RunError
    from utils.evaluation.handoff import write_predictions

    out = run_stage.out
    # 3 classes x 0.5 = 1.5 -> K = 2 (half up), over the --top-k 1 also given (one notice line)
    run_stage("sltnet.localizer.train", "localizer_train", *SIZE, "--top-k", "1", "--top-k-ratio", "0.5",
              "--vst-bn", "frozen", "--smt-variant", "exclude-topk", "--teacher-map", "acam-label",
              "--regressor-pool", "grid", "--regressor-grid", "2", "--head-lr-mult", "10",
              "--epochs", "1", "--max-steps-per-epoch", "1")
    assert "notice: --top-k-ratio 0.5 gives K = 2 of 3 classes; it wins over --top-k 1" in capsys.readouterr().err
    trained = yaml.safe_load((out / "localizer" / "args.yaml").read_text())
    assert {k: trained[k] for k in ("top_k", "top_k_ratio", "vst_bn", "smt_variant", "teacher_map", "regressor_pool",
                                    "regressor_grid")} == {"top_k": 2, "top_k_ratio": 0.5, "vst_bn": "frozen",
                                                           "smt_variant": "exclude-topk", "teacher_map": "acam-label",
                                                           "regressor_pool": "grid", "regressor_grid": 2}
    log = [json.loads(line) for line in (out / "localizer" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(log[-1][k]) for k in ("loss_cls", "loss_vst", "loss_reg"))
    lrs = [g["lr"] for g in torch.load(out / "localizer" / "checkpoint.pth", weights_only=True)["optimizer"]["param_groups"]]
    assert lrs == pytest.approx([2e-4, 2e-3, 2e-4, 2e-3])        # localizer, its head, regressor, its head (x 10)

    # the teacher boxes: K read from the training run, the threshold chosen on the train split's boxes
    run_stage("sltnet.localizer.test", "localizer_test", *SIZE, "--split", "train", "--teacher-map", "acam-label",
              "--box-threshold", "best", "--no-scoremaps", "--no-maxboxacc")
    assert "--top-k 2" in capsys.readouterr().err                 # the notice of the inherited options
    meta = json.loads((out / "localizer" / "train" / "boxes.json").read_text())
    metrics = json.loads((out / "localizer" / "train" / "metrics.json").read_text())
    assert meta["box_threshold"] in BEST_THRESHOLDS and meta["box_threshold"] == metrics["box_threshold"]
    assert meta["box_threshold_source"].startswith("best GT-known Loc of split train over thresholds 0.05..0.95")
    assert (meta["teacher_map"], meta["map"], meta["top_k"]) == ("acam-label", "top-2 ACAM, label forced among the K "
                                                                 "classes", 2)
    curve = metrics["box_threshold_sweep"]["gt_known_loc"]
    assert len(curve) == 91 and max(curve) == metrics["box_threshold_gt_known_loc"] == metrics["gt_known_loc"]
    assert curve.index(max(curve)) == BEST_THRESHOLDS.index(meta["box_threshold"])   # the lowest of the best
    assert yaml.safe_load((out / "localizer" / "train" / "test_args.yaml").read_text())["box_threshold"] == "best"
    # a test step may evaluate another K (not refused); --top-k-ratio resolves on this split's classes
    run_stage("sltnet.localizer.test", "localizer_test", *SIZE, "--top-k-ratio", "0.34", "--no-scoremaps",
              "--no-maxboxacc", "--teacher-map", "gt", "--box-threshold", "0.3")
    meta = json.loads((out / "localizer" / "test" / "boxes.json").read_text())
    assert (meta["top_k"], meta["map"], meta["teacher_map"], meta["box_threshold"]) == (1, "GT-class CAM", "gt", 0.3)
    assert meta["box_threshold_source"] == "fixed (--box-threshold)"
    with pytest.raises(DataError, match="--box-threshold best chooses the threshold on the training split's GT "
                                        "boxes only, this run is on split test"):
        run_stage("sltnet.localizer.test", "localizer_test", *SIZE, "--box-threshold", "best")

    # the standalone regressor on those boxes: grid head, new FC layers at lr x 10
    run_stage("sltnet.regressor.train", "regressor_train", *SIZE, "--regressor-pool", "grid", "--regressor-grid", "2",
              "--head-lr-mult", "10", "--regressor-lr", "1e-3", "--epochs", "1", "--max-steps-per-epoch", "1")
    ck = torch.load(out / "regressor" / "checkpoint.pth", weights_only=True)
    assert [g["lr"] for g in ck["optimizer"]["param_groups"]] == pytest.approx([1e-3, 1e-2])
    assert ck["model"]["fc.0.weight"].shape[1] == 512 * 4              # VGG16 conv5: 512 channels x 2 x 2 cells
    test = load_records(birds, "cub", "test")
    write_predictions(out / "classifier" / "test" / "predictions.csv", [r.image_id for r in test],
                      [r.label for r in test], [[r.label] for r in test])
    run_stage("sltnet.regressor.test", "regressor_test", *SIZE, "--regressor-source", "regressor", "--grid-images", "0",
              "--top-k-ratio", "0.15")
    assert "--regressor-pool grid" in capsys.readouterr().err
    assert yaml.safe_load((out / "regressor" / "test" / "test_args.yaml").read_text())["regressor_grid"] == 2
    with pytest.raises(RunError, match="the training run used --regressor-pool grid, this test step was given "
                                       "--regressor-pool gap"):
        run_stage("sltnet.regressor.test", "regressor_test", *SIZE, "--regressor-source", "regressor",
                  "--regressor-pool", "gap", "--output-dir", str(tmp_path / "refused"))
    with pytest.raises(RunError, match="the training run used --regressor-grid 2"):
        run_stage("sltnet.regressor.test", "regressor_test", *SIZE, "--regressor-source", "regressor",
                  "--regressor-grid", "3", "--output-dir", str(tmp_path / "refused"))
    # explicit weights skip args.yaml: a GAP head then refuses the grid head's weights (strict loading)
    with pytest.raises(DataError, match=r"fc.0.weight \[512, 2048\] vs model \[512, 512\]"):
        run_stage("sltnet.regressor.test", "regressor_test", *SIZE, "--weights", str(out / "regressor" / "model.pth"),
                  "--box-scale", "stride", "--box-stride", "16", "--output-dir", str(tmp_path / "refused"))
    # the joint regressor (grid, from the localizer's args.yaml) tests as well
    run_stage("sltnet.regressor.test", "regressor_test", *SIZE, "--grid-images", "0",
              "--output-dir", str(tmp_path / "joint"))
    assert yaml.safe_load((tmp_path / "joint" / "test_args.yaml").read_text())["regressor_pool"] == "grid"


def test_acam_label_with_acam_off_is_refused(run_stage):
    with pytest.raises(DataError, match="--teacher-map acam-label is a top-K ACAM, --no-acam turns ACAM off"):
        run_stage("sltnet.localizer.train", "localizer_train", *SIZE, "--teacher-map", "acam-label", "--no-acam")


BAD_VALUES = [
    ("sltnet/localizer/train.py", ["--vst-bn", "fixed"], "argument --vst-bn: invalid choice: 'fixed'"),
    ("sltnet/localizer/train.py", ["--smt-variant", "eq9"], "argument --smt-variant: invalid choice: 'eq9'"),
    ("sltnet/localizer/train.py", ["--teacher-map", "cam"], "argument --teacher-map: invalid choice: 'cam'"),
    ("sltnet/localizer/train.py", ["--top-k-ratio", "0"], "argument --top-k-ratio: must be a number in (0, 1], got '0'"),
    ("sltnet/localizer/train.py", ["--regressor-pool", "max"], "argument --regressor-pool: invalid choice: 'max'"),
    ("sltnet/regressor/train.py", ["--regressor-grid", "0"], "argument --regressor-grid: must be an integer >= 1, got '0'"),
    ("sltnet/localizer/test.py", ["--box-threshold", "bestest"],
     "argument --box-threshold: must be a number in [0, 1] or 'best', got 'bestest'"),
    ("sltnet/localizer/test.py", ["--top-k-ratio", "1.5"], "argument --top-k-ratio: must be a number in (0, 1], got '1.5'"),
    ("sltnet/regressor/test.py", ["--top-k-ratio", "x"], "argument --top-k-ratio: must be a number in (0, 1], got 'x'"),
    ("sltnet/regressor/test.py", ["--regressor-grid", "two"], "argument --regressor-grid: must be an integer >= 1"),
]


def test_a_bad_value_of_a_new_option_is_an_error_line_naming_it(tmp_path):
    """Each script answers a bad value before torch loads: exit status 2, the last line names the option
    (argparse's usage line comes first); in a config file, one error line with the file and line."""
    import subprocess
    import sys

    from sltnet.options import PARSERS
    from utils.paths import REPO_ROOT

    code = ("import contextlib, io, json, runpy, sys\n"
            "out = []\n"
            "for script, *argv in json.loads(sys.argv[1]):\n"
            "    err = io.StringIO()\n"
            "    sys.argv = [script, *argv]\n"
            "    try:\n"
            "        with contextlib.redirect_stderr(err):\n"
            "            runpy.run_path(script, run_name='__main__')\n"
            "    except SystemExit as exc:\n"
            "        out.append([exc.code, err.getvalue(), 'torch' in sys.modules])\n"
            "print('RESULTS ' + json.dumps(out))\n")
    runs = json.dumps([[script, *argv] for script, argv, _ in BAD_VALUES])
    proc = subprocess.run([sys.executable, "-c", code, runs], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    results = json.loads(proc.stdout.split("RESULTS ", 1)[1])
    for (script, argv, message), (code_, err, torch_loaded) in zip(BAD_VALUES, results):
        lines = err.strip().splitlines()
        assert code_ == 2 and not torch_loaded and len(lines) == 1, (argv, lines)   # one line, before torch
        assert lines[0].startswith(f"error: {message}") and lines[0].endswith(f"(see {script} --help)"), (argv, lines)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("localizer_train:\n  top_k: 30\n  top_k_ratio: 1.5\n")
    with pytest.raises(DataError, match=r"bad.yaml:3: option 'top_k_ratio': must be a number in \(0, 1\], got '1.5'"):
        parse_args(PARSERS["localizer_train"](), ["--config", str(cfg)], stage="localizer_train")
