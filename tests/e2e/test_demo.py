"""demo.py at a tiny size: every stage runs, results.json has every row, every picture is written."""
import json
from pathlib import Path

import numpy as np
import pytest

import demo
from demo_birds.prepare import prepare_pretrained
from demo_birds.scoring import centre_box_map, choose_centre_fraction
from demo_birds.settings import resolve_settings
from utils.data.layouts import load_records
from utils.evaluation.protocol import get_protocol
from utils.evaluation.metrics import box_iou

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROWS = ["CAM, new optimization (SLT-Net's recipe)", "CAM, aggressive fine-tuning", "SLT-Net + SMT",
        "SLT-Net + SMT + top-K ACAM", "SLT-Net VST alone", "SLT-Net map (SMT + top-K ACAM + VST)",
        "SLT-Net final (regressor box, classifier class)", "SPOL", "Whole-image box"]
TRAIN_STAGES = ["cam/localizer", "cam_aggressive/localizer", "sltnet_smt/localizer", "sltnet_smt_acam/localizer",
                "sltnet_vst/localizer", "spol/cls", "spol/cam", "spol/seg", "sltnet/localizer", "sltnet/regressor",
                "sltnet/classifier"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("demo")
    args = demo.get_args_parser().parse_args(
        ["--tiny", "--device", "cpu", "--data-out", str(base / "data"), "--output-dir", str(base / "out"),
         "--pretrain-dir", str(base / "resource")])
    results = demo.main(args)
    return base, results


def test_tiny_demo_writes_every_row_and_picture(tiny_run):
    base, results = tiny_run
    out = base / "out"
    saved = json.loads((out / "results.json").read_text())
    names = [r["method"] for r in saved["rows"]]
    assert names[:9] == ROWS
    assert names[9].startswith("Centre box (") and names[10] == "True mask (upper bound)"
    assert [r["kind"] for r in saved["rows"]] == ["method"] * 8 + ["baseline"] * 2 + ["upper_bound"]
    for row in saved["rows"]:
        assert row["gt_known_loc"] is not None
    for row in saved["rows"][:8]:
        assert row["top1_cls"] is not None and row["top1_loc"] is not None
    for key in ("grid", "curves", "losses"):
        assert (out / saved["figures"][key]).read_bytes()[:8] == PNG_MAGIC
        assert f"]({saved['figures'][key]})" in (out / "report.md").read_text()
    # the stages themselves ran: their own outputs and training logs are there
    runs = out / "runs"
    for path in ("cam/localizer/model.pth", "spol/cls/predictions.csv", "spol/cam/pseudo_masks.json",
                 "spol/seg/model.pth", "sltnet/classifier/test/predictions.csv", "sltnet/regressor/test/metrics.json",
                 "sltnet/localizer/teacher/boxes.csv", "sltnet/regressor/model.pth"):
        assert (runs / path).is_file(), path
    assert len(saved["loss_logs"]) == 11
    # what each GT-known row boxes, and the families of the generated set
    maps = {r["method"]: r["map"] for r in saved["rows"]}
    assert maps[ROWS[0]] == maps[ROWS[1]] == maps[ROWS[2]] == maps[ROWS[4]] == "GT-class CAM"
    assert maps[ROWS[3]].startswith("top-2 ACAM") and maps[ROWS[5]].startswith("top-2 ACAM")
    assert saved["dataset"]["families"] == 2 and saved["dataset"]["species"] == 2 and saved["dataset"]["classes"] == 4
    for log in saved["loss_logs"].values():
        assert Path(log).is_file() and Path(log).name == "log.jsonl"


def test_tiny_demo_baselines_match_hand_computation(tiny_run):
    base, results = tiny_run
    size = results["settings"]["input_size"]
    test = load_records(base / "data", "cub", "test")
    rows = {r["method"]: r for r in results["rows"]}
    # whole image vs each GT box, inclusive IoU >= 0.5
    whole = np.array([[0, 0, size - 1, size - 1]])
    hits = [box_iou(whole, get_protocol("resize", size).gt_boxes(r.boxes, r.size), inclusive=True).max() >= 0.5
            for r in test]
    assert rows["Whole-image box"]["gt_known_loc"] == pytest.approx(100.0 * np.mean(hits))
    assert rows["True mask (upper bound)"]["gt_known_loc"] == pytest.approx(100.0)
    assert rows["True mask (upper bound)"]["pxap"] == pytest.approx(100.0)
    # the centre box fraction is the one chosen on the TRAINING split
    fraction, _ = choose_centre_fraction(load_records(base / "data", "cub", "train"), size)
    assert f"({fraction:.0%} of the side)" in [n for n in rows if n.startswith("Centre")][0]


def test_centre_box_map_and_fraction_by_hand():
    m = centre_box_map(10, 0.6)
    assert m.sum() == 36 and m[2, 2] == 1 and m[1, 1] == 0 and m[7, 7] == 1 and m[8, 8] == 0


def test_unknown_demo_setting_is_an_error(tmp_path):
    cfg = tmp_path / "demo.yaml"
    cfg.write_text("demo:\n  families: 3\n  colour: red\n")
    args = demo.get_args_parser().parse_args(["--config", str(cfg)])
    with pytest.raises(ValueError, match="colour"):
        resolve_settings(args)
    cfg.write_text("demo:\n  families: 3\n")
    args = demo.get_args_parser().parse_args(["--config", str(cfg), "--families", "7"])
    assert resolve_settings(args)["families"] == 7      # command line wins over the config


def test_presets_and_seeds(tmp_path):
    """--preset full adds the config's demo_full: mapping (seeds, ablation rows) on top of demo:;
    --seed alone runs that one seed; a seed given twice is refused."""
    from utils.errors import DataError

    cfg = tmp_path / "demo.yaml"
    cfg.write_text("demo:\n  families: 3\n  seed: 4\ndemo_full:\n  seeds: [0, 1, 2]\n  ablation: true\n")
    quick = resolve_settings(demo.get_args_parser().parse_args(["--config", str(cfg)]))
    assert quick["seeds"] == [4] and quick["ablation"] is False and quick["families"] == 3
    full = resolve_settings(demo.get_args_parser().parse_args(["--config", str(cfg), "--preset", "full"]))
    assert full["seeds"] == [0, 1, 2] and full["ablation"] is True and full["families"] == 3
    one = resolve_settings(demo.get_args_parser().parse_args(["--config", str(cfg), "--preset", "full", "--seed", "7"]))
    assert one["seeds"] == [7]
    with pytest.raises(DataError, match="a seed is given twice"):
        resolve_settings(demo.get_args_parser().parse_args(["--config", str(cfg), "--seeds", "1", "1"]))


def test_the_demo_plan_holds_the_ablation_rows_and_the_regressor_path():
    """The Table 5 rows are localizer trainings with SMT / top-K ACAM / VST switched; the final
    regressor learns the final localizer's training-split boxes (its teacher) with its own backbone."""
    from demo_birds.plan import stage_plan

    s = resolve_settings(demo.get_args_parser().parse_args(["--preset", "full"]))
    plan = stage_plan("demo.yaml", "data", Path("runs"), s, "cpu", "off", False, "none")
    labels = [label for label, *_ in plan]
    for row in ("SLT-Net + SMT", "SLT-Net + SMT + top-K ACAM", "SLT-Net VST alone"):
        assert f"{row}: localizer train" in labels and f"{row}: localizer test (train split)" in labels
    argv = {label: [str(a) for a in a_] for label, _, _, a_ in plan}
    smt_acam = argv["SLT-Net + SMT + top-K ACAM: localizer train"]
    assert "--smt" in smt_acam and "--acam" in smt_acam and "--no-vst" in smt_acam
    teacher = argv["SLT-Net: teacher boxes (train split)"]
    assert teacher[teacher.index("--split") + 1] == "train" and teacher[teacher.index("--teacher-map") + 1] == s["teacher_map"]
    reg = argv["SLT-Net: regressor train"]
    assert reg[reg.index("--boxes") + 1] == str(Path("runs/sltnet/localizer/teacher/boxes.csv"))
    assert labels.index("SLT-Net: teacher boxes (train split)") < labels.index("SLT-Net: regressor train") \
        < labels.index("SLT-Net: regressor test")
    test = argv["SLT-Net: regressor test"]
    assert test[test.index("--regressor-source") + 1] == "regressor"
    quick = stage_plan("demo.yaml", "data", Path("runs"), {**s, "ablation": False}, "cpu", "off", False, "none")
    assert not any("+ SMT" in label for label, *_ in quick)


def test_tiny_demo_pretrains_once_and_every_training_stage_starts_from_the_file(tiny_run):
    import hashlib

    import torch

    from network.backbones import build_backbone
    from utils.engine.checkpoint import load_checkpoint

    base, results = tiny_run
    weights = Path(results["pretrained"])
    # the stand-in pretraining ran (2 steps) into --pretrain-dir, under a name encoding its settings
    net = results["settings"]["backbone"]  # configs/demo.yaml's choice
    assert weights.parent == base / "resource" and weights.name.startswith(f"standin_{net}_s64_c54_st2_b4_")
    info = json.loads(weights.with_suffix(".json").read_text())
    assert info["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest() == results["pretraining"]["sha256"]
    assert 0.0 <= info["heldout_top1"] <= 100.0 and info["images_seen"] == 8
    assert "held-out top-1" in (base / "out" / "report.md").read_text()
    model = build_backbone(net, str(weights))  # strict load
    assert torch.equal(model.conv1.weight, load_checkpoint(weights)["conv1.weight"].float())
    # --pretrained <file> reached every training stage (their checkpoints record their arguments)
    for stage in TRAIN_STAGES:
        ck = load_checkpoint(base / "out" / "runs" / stage / "checkpoint.pth")
        assert ck["args"]["pretrained"] == str(weights), stage
        # ... and so did the demo's backbone
        assert ck["args"]["backbone"] == net, stage
    # a second run reuses the file instead of pretraining again
    before = weights.stat().st_mtime_ns
    args = demo.get_args_parser().parse_args(["--tiny", "--pretrain-dir", str(base / "resource")])
    path, again = prepare_pretrained(args, resolve_settings(args), True)
    assert path == str(weights) and again["sha256"] == info["sha256"] and weights.stat().st_mtime_ns == before


def test_cam_readout_is_the_networks_own_top_classes(tiny_run):
    """demo_birds.readout (through utils.engine.inference.run_inference) writes the top-k classes a plain
    no-grad forward pass of the CAM network gives, image by image."""
    import torch

    from demo_birds.plan import stage_plan
    from sltnet.localizer import test as localizer_test
    from sltnet.model import build_branch
    from sltnet.options import PRODUCER, resolve_defaults
    from utils.engine.checkpoint import load_stage_weights
    from utils.config import parse_args
    from utils.data.dataset import WSOLDataset
    from utils.data.layouts import num_classes
    from utils.evaluation.handoff import read_predictions
    from utils.data.transforms import build_transform

    base, results = tiny_run
    runs = base / "out" / "runs"
    plan = stage_plan(demo.get_args_parser().parse_args([]).config, str(base / "data"), runs, results["settings"],
                      "cpu", "off", True, results["pretrained"])
    args = resolve_defaults(parse_args(localizer_test.get_args_parser(), [str(a) for a in plan[1][3]],
                                       stage="localizer_test"), "localizer")
    test = load_records(base / "data", "cub", "test")
    branch = build_branch(args, num_classes(test), pretrained="none")
    load_stage_weights(branch, runs / "cam" / "localizer" / "model.pth", PRODUCER["localizer"])
    model = branch.localizer.eval()
    written = read_predictions(runs / "cam" / "localizer" / "predictions.csv")
    dataset = WSOLDataset(test, build_transform("resize", resize=args.input_size))
    with torch.no_grad():
        for i, r in enumerate(test):
            logits = model(dataset[i]["image"][None])["logits"][0]
            k = min(5, num_classes(test))
            assert written[r.image_id].top5 == tuple(logits.topk(k).indices.tolist()), r.image_id
            assert written[r.image_id].label == r.label


def test_demo_help_answers_before_torch_loads():
    """``python3 demo.py --help`` parses before the demo's heavy imports (demo_birds.run loads torch)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    code = ("import contextlib, io, runpy, sys\n"
            "sys.argv = ['demo.py', '--help']\n"
            "out = io.StringIO()\n"
            "try:\n    with contextlib.redirect_stdout(out):\n"
            "        runpy.run_path('demo.py', run_name='__main__')\n"
            "except SystemExit as exc:\n"
            "    print(out.getvalue()); print('EXIT', exc.code, [m for m in ('torch', 'cv2', 'matplotlib')"
            " if m in sys.modules])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("usage: demo.py "), (proc.stdout[:300], proc.stderr[-2000:])
    assert proc.stdout.strip().endswith("EXIT 0 []")
    assert "--pretrain-dir" in proc.stdout and "--aggressive-epochs" in proc.stdout


def test_demo_refuses_an_output_folder_it_did_not_write(tiny_run, tmp_path):
    """A runs/ folder without the demo's marker is a user's: the demo stops with one line naming it and
    deletes nothing (it reuses the tiny run's data and pretraining, so this runs no stage)."""
    from utils.errors import DataError

    base, _ = tiny_run
    mine = tmp_path / "out" / "runs" / "mine.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("not the demo's")
    args = demo.get_args_parser().parse_args(
        ["--tiny", "--device", "cpu", "--data-out", str(base / "data"), "--output-dir", str(tmp_path / "out"),
         "--pretrain-dir", str(base / "resource")])
    with pytest.raises(DataError, match=r"runs.*not written by demo.py"):
        demo.main(args)
    assert mine.read_text() == "not the demo's"


def test_cam_readout_builds_the_network_the_run_trained(tiny_run, tmp_path, monkeypatch):
    """The read-out takes the model options the localizer test step would take from the training
    run's args.yaml: the demo trains its CAM at output stride 8, and a read-out whose own options
    leave the stride at its default still builds (and loads the weights into) the stride-8 network."""
    import yaml

    import sltnet.model
    from demo_birds.readout import cam_predictions
    from utils.evaluation.handoff import read_predictions

    base, _ = tiny_run
    loc = base / "out" / "runs" / "cam" / "localizer"
    assert yaml.safe_load((loc / "args.yaml").read_text())["output_stride"] == 8
    built, real = [], sltnet.model.build_branch
    monkeypatch.setattr(sltnet.model, "build_branch",
                        lambda args, *a, **k: built.append((args.output_stride, args.cam_feature)) or real(args, *a, **k))
    test = load_records(base / "data", "cub", "test")
    # everything but the stride given: at the default stride 32 the same weights would load silently
    out = cam_predictions(["--data-root", base / "data", "--layout", "cub", "--device", "cpu", "--workers", 0,
                           "--batch-size", 4, "--input-size", 64, "--backbone", "resnet18", "--cam-feature",
                           "layer3", "--share-backbone", "--localizer-dir", loc], test, tmp_path / "p.csv")
    assert built == [(8, "layer3")]
    assert set(read_predictions(out)) == {r.image_id for r in test}


def test_demo_stages_run_as_their_scripts_do(tiny_run, tmp_path, capsys):
    """demo_birds.plan.run_stage runs a stage through its main, as ``python3 spol/cam/test.py`` does:
    a test step given no --output-stride builds the model its training run used (8 in the demo,
    read from that run's args.yaml), not the default 32 into which the same weights would load."""
    import shutil

    import yaml

    from demo_birds.plan import run_stage

    base, _ = tiny_run
    cam = tmp_path / "cam"
    shutil.copytree(base / "out" / "runs" / "spol" / "cam", cam)  # the shared run stays as it is
    run_stage("spol.cam.test", "cam_test", ["--data-root", base / "data", "--layout", "cub", "--device", "cpu",
                                            "--workers", 0, "--batch-size", 4, "--backbone", "resnet18",
                                            "--resize-size", 72, "--output-dir", cam])
    assert yaml.safe_load((cam / "test_args.yaml").read_text())["output_stride"] == 8
    assert "--output-stride 8 read from" in capsys.readouterr().err


def test_tiny_demo_at_two_seeds_reports_their_spread(tmp_path):
    """--seeds 0 1: one run per seed in seed<N>/ (each on its own generated set), then the combined
    report: the first seed's table, every seed's value per row and its spread."""
    args = demo.get_args_parser().parse_args(
        ["--tiny", "--device", "cpu", "--seeds", "0", "1", "--aggressive-epochs", "0", "--data-out",
         str(tmp_path / "data"), "--output-dir", str(tmp_path / "out"), "--pretrain-dir", str(tmp_path / "resource")])
    results = demo.main(args)
    out = tmp_path / "out"
    per_seed = [json.loads((out / f"seed{k}" / "results.json").read_text()) for k in (0, 1)]
    assert [r["settings"]["seed"] for r in per_seed] == [0, 1]
    assert per_seed[0]["dataset"]["root"] != per_seed[1]["dataset"]["root"]     # another generated set per seed
    spread = json.loads((out / "results.json").read_text())["seed_spread"]["gt_known_loc"]
    assert spread["seeds"] == [0, 1]
    for row in per_seed[0]["rows"]:
        if row["kind"] == "method":
            assert spread["rows"][row["method"]] == [row["gt_known_loc"],
                                                     {r["method"]: r for r in per_seed[1]["rows"]}[row["method"]]["gt_known_loc"]]
    report = (out / "report.md").read_text()
    assert "Seed spread (GT-known Loc" in report and "seed 1" in report and results["rows"] == per_seed[0]["rows"]
