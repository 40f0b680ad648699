"""localize.runs: which stage wrote a folder (from its args.yaml), the kind it localizes with, the
classifier beside it, the box threshold and the reason given for it, and the one error line of
every folder that cannot be used."""
import json

import pytest
import yaml

from localize import runs
from utils.engine.checkpoint import save_checkpoint
from utils.errors import DataError


@pytest.fixture(scope="module")
def all_runs(made_runs):
    return made_runs


@pytest.mark.parametrize("name,stage,kind", [
    ("seg", "seg_train", "spol"), ("localizer", "localizer_train", "sltnet-map"),
    ("plain_cam", "localizer_train", "cam"), ("regressor", "regressor_train", "sltnet-final")])
def test_a_run_is_told_by_its_args_yaml_and_gets_its_own_kind(all_runs, name, stage, kind):
    run = runs.read_run(all_runs[name])
    assert run.stage == stage and runs.run_kind(run, None) == kind


def test_a_localizer_run_takes_each_of_its_kinds_and_refuses_the_others(all_runs):
    run = runs.read_run(all_runs["localizer"])
    assert [runs.run_kind(run, k) for k in ("sltnet-map", "cam", "sltnet-final")] == ["sltnet-map", "cam",
                                                                                   "sltnet-final"]
    with pytest.raises(DataError, match=r"localizer: --kind spol: the folder is an SLT-Net localizer run, whose "
                                        r"kinds are sltnet-map, cam, sltnet-final$"):
        runs.run_kind(run, "spol")
    with pytest.raises(DataError, match="whose kinds are spol$"):
        runs.run_kind(runs.read_run(all_runs["seg"]), "cam")


def test_a_classifier_run_as_run_says_where_it_goes(all_runs):
    for name, words in (("cls", "a SPOL cls run"), ("classifier", "an SLT-Net classifier run")):
        with pytest.raises(DataError, match=f"is {words} .*which does not localize.* give it as --classifier-run"):
            runs.run_kind(runs.read_run(all_runs[name]), None)


def test_every_folder_that_is_no_finished_run_is_one_line(all_runs, tmp_path):
    def error(folder):
        with pytest.raises(DataError) as info:
            runs.read_run(folder)
        assert "\n" not in str(info.value)
        return str(info.value)

    assert error(tmp_path / "nowhere") == f"{tmp_path / 'nowhere'}: --run: not found"
    (tmp_path / "file").write_text("x")
    assert "--run: is a file; --run names a training run's folder" in error(tmp_path / "file")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"")
    assert error(photos).startswith(f"{photos}: --run: not a training run of this project")
    # a test step's folder (test_args.yaml alone)
    test_step = tmp_path / "test"
    test_step.mkdir()
    (test_step / "test_args.yaml").write_text("split: test\n")
    assert "holds a test step's outputs (test_args.yaml), not a training run" in error(test_step)
    # args.yaml without output_dir (not a stage's), and a model.pth beside it
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "args.yaml").write_text("lr: 0.1\n")
    (foreign / "model.pth").write_bytes(b"")
    assert "not a training run of this project" in error(foreign)
    # a run that has not finished: the Trainer's checkpoint.pth, no model.pth
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "args.yaml").write_text((all_runs["seg"] / "args.yaml").read_text())
    save_checkpoint(unfinished / "checkpoint.pth", {"stage": "spol_seg", "epoch": 0, "model": {}})
    assert "the training run has not finished (no model.pth" in error(unfinished)
    # options no stage of this version has
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "args.yaml").write_text("output_dir: x\nno_such_option: 1\n")
    (odd / "model.pth").write_bytes(b"")
    assert error(odd) == f"{odd / 'args.yaml'}: holds the options of no training stage of this version: pass a " \
                         "folder a stage's train.py wrote"


def test_the_classifier_is_the_sibling_folder_or_the_one_given(all_runs, tmp_path):
    seg, regressor = runs.read_run(all_runs["seg"]), runs.read_run(all_runs["regressor"])
    assert runs.find_classifier(seg, "spol", None).folder == all_runs["cls"]
    assert runs.find_classifier(seg, "spol", "none") is None
    assert runs.find_classifier(regressor, "sltnet-final", None).folder == all_runs["classifier"]
    assert runs.find_classifier(runs.read_run(all_runs["localizer"]), "sltnet-map", None) is None
    with pytest.raises(DataError, match="sltnet-final takes its class from a classifier run"):
        runs.find_classifier(regressor, "sltnet-final", "none")
    with pytest.raises(DataError, match=r"--classifier-run: is a SPOL cls run; kind sltnet-final takes an SLT-Net "
                                        r"classifier run \(sltnet/classifier/train.py\)"):
        runs.find_classifier(regressor, "sltnet-final", str(all_runs["cls"]))
    with pytest.raises(DataError, match="kind cam classifies with its own localizer's logits"):
        runs.find_classifier(runs.read_run(all_runs["plain_cam"]), "cam", str(all_runs["classifier"]))
    # a regressor run with no classifier run beside it
    alone = runs.Run(tmp_path / "regressor", "regressor_train", {})
    with pytest.raises(DataError, match=f"^{tmp_path / 'classifier'}: no SLT-Net classifier run here: "
                                        "sltnet-final takes its class from one"):
        runs.find_classifier(alone, "sltnet-final", None)


# ----------------------------------------------------------------------------- the threshold
def seg_run(folder, **options) -> runs.Run:
    folder.mkdir(parents=True, exist_ok=True)
    return runs.Run(folder, "seg_train", {"layout": "cub", "dataset": None, "split": "train", "input_size": 32,
                                          **options})


def seg_test_step(run, *, split: str, threshold: float, input_size: int = 32) -> None:
    """What spol/seg/test.py --threshold-split SPLIT leaves: test_args.yaml, wsol/metrics.json."""
    (run.folder / "test_args.yaml").write_text(yaml.safe_dump({"split": "test", "threshold_split": split,
                                                               "input_size": input_size}))
    (run.folder / "wsol").mkdir(exist_ok=True)
    (run.folder / "wsol" / "metrics.json").write_text(json.dumps({"threshold_used": threshold}))


def test_spol_takes_its_fixed_threshold_per_dataset(tmp_path):
    cub = runs.choose_threshold("spol", seg_run(tmp_path / "cub"), None, "cub")
    assert (cub.value, cub.rule) == (0.2, "spol")
    assert cub.why.startswith("SPOL's fixed threshold for cub (configs/spol_cub.yaml seg_test.spol_threshold)")
    imagenet = runs.choose_threshold("spol", seg_run(tmp_path / "in", layout="ilsvrc"), None,
                                     runs.spol_dataset(seg_run(tmp_path / "in", layout="ilsvrc"), None))
    assert (imagenet.value, imagenet.rule) == (0.8, "spol")
    given = runs.choose_threshold("spol", seg_run(tmp_path / "cub"), 0.45, "cub")
    assert (given.value, given.rule) == (0.45, "spol") and given.why.startswith("--threshold")


def test_spol_takes_the_threshold_its_test_step_chose_on_a_held_out_split(tmp_path):
    run = seg_run(tmp_path / "seg")
    seg_test_step(run, split="val", threshold=0.37)
    chosen = runs.choose_threshold("spol", run, None, "cub")
    assert (chosen.value, chosen.rule) == (0.37, "choe")   # wsol protocol: Choe et al.'s box rule
    assert chosen.why.startswith("chosen by spol/seg/test.py on the held-out split 'val'")
    # for the centre-crop geometry, the authors' fixed one (the choice was made on whole images)
    assert runs.choose_threshold("spol", run, None, "cub", crops=True).value == 0.2
    # chosen at another input size than the run's: not that geometry either
    seg_test_step(run, split="val", threshold=0.37, input_size=64)
    assert runs.choose_threshold("spol", run, None, "cub").value == 0.2


def test_a_threshold_chosen_on_the_training_split_is_named_not_used(tmp_path):
    run = seg_run(tmp_path / "seg")
    seg_test_step(run, split="train", threshold=0.37)
    chosen = runs.choose_threshold("spol", run, None, "cub")
    assert chosen.value == 0.2 and "the test step's 0.37 was chosen on split 'train', which is not held out " \
                                   "(--threshold 0.37 uses it)" in chosen.why
    localizer = runs.Run(tmp_path / "localizer", "localizer_train", {"acam": True, "box_rule": "zhou",
                                                                      "box_threshold": 0.2})
    (localizer.folder / "train").mkdir(parents=True)
    (localizer.folder / "train" / "boxes.json").write_text(json.dumps({
        "box_threshold": 0.3, "box_threshold_source": "best GT-known Loc of split train", "box_rule": "zhou",
        "split": "train"}))
    chosen = runs.choose_threshold("sltnet-map", localizer, None, None)
    assert chosen.value == 0.2 and "the localizer test's 0.3 was chosen on split 'train'" in chosen.why


def test_sltnet_takes_its_runs_box_threshold_and_rule(tmp_path):
    run = runs.Run(tmp_path, "localizer_train", {"box_rule": "choe", "box_threshold": 0.35, "acam": False})
    chosen = runs.choose_threshold("cam", run, None, None)
    assert (chosen.value, chosen.rule) == (0.35, "choe") and chosen.why.startswith(
        f"the run's box_threshold ({tmp_path / 'args.yaml'})")
    older = runs.Run(tmp_path, "localizer_train", {"acam": False})   # no box_threshold, no box_rule recorded
    assert (runs.choose_threshold("cam", older, None, None).value, runs.choose_threshold("cam", older, None, None).rule) \
        == (0.2, "zhou")
    assert runs.choose_threshold("cam", run, 0.5, None).value == 0.5
    final = runs.choose_threshold("sltnet-final", run, None, None)
    assert final.value is None and final.why.startswith("none: the regressor predicts the box")
    with pytest.raises(DataError, match="--threshold: kind sltnet-final takes its box from the regressor"):
        runs.choose_threshold("sltnet-final", run, 0.5, None)


def test_spol_without_a_known_dataset_asks_for_a_threshold(tmp_path):
    with pytest.raises(DataError, match="^--checkpoint: pass --dataset cub or --dataset imagenet"):
        runs.choose_threshold("spol", None, None, None)
    run = seg_run(tmp_path / "meta", layout="metadata")
    with pytest.raises(DataError, match=f"^{tmp_path / 'meta' / 'args.yaml'}: names no dataset with a fixed SPOL "
                                        "threshold .*: pass --threshold"):
        runs.choose_threshold("spol", run, None, runs.spol_dataset(run, None))
    assert runs.choose_threshold("spol", run, 0.3, None).value == 0.3


def test_class_names_come_from_the_classifiers_dataset(all_runs, tmp_path):
    classifier = runs.read_run(all_runs["classifier"])
    assert runs.class_names(classifier, 2)[0] == ["001.Red_bird", "002.Blue_bird"]
    names, why = runs.class_names(classifier, 5)
    assert names is None and why.endswith("has 2 classes, the classifier 5")
    gone = runs.Run(tmp_path, "classifier_train", {"data_root": str(tmp_path / "gone"), "layout": "cub"})
    names, why = runs.class_names(gone, 2)
    assert names is None and why.startswith("its dataset is not readable here")
