"""What a run folder holds, read without building a network: which training stage wrote it (from the
options in its ``args.yaml``), which kind of localizer it makes, the classifier beside it, the box
threshold and why, the class names. Every fault is one ``DataError`` line naming the folder or file."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from localize.options import KINDS
from utils.errors import DataError
from utils.paths import TEST_ARGS, TRAIN_ARGS

# training stage (its parser's name in spol.options.PARSERS / sltnet.options.PARSERS) -> (the script,
# what a folder of it is in words)
STAGES = {
    "seg_train": ("spol/seg/train.py", "a SPOL seg run"),
    "cam_train": ("spol/cam/train.py", "a SPOL cam run"),
    "cls_train": ("spol/cls/train.py", "a SPOL cls run"),
    "localizer_train": ("sltnet/localizer/train.py", "an SLT-Net localizer run"),
    "regressor_train": ("sltnet/regressor/train.py", "an SLT-Net regressor run"),
    "classifier_train": ("sltnet/classifier/train.py", "an SLT-Net classifier run"),
}
# the kinds each stage's run can localize with, its own first
RUN_KINDS = {"seg_train": ("spol",), "localizer_train": ("sltnet-map", "cam", "sltnet-final"),
             "regressor_train": ("sltnet-final",)}
# the classifier run of each kind: its stage and its folder beside the run (utils.paths.stage_dir's layout)
CLASSIFIER_OF = {"spol": ("cls_train", "cls"), "sltnet-final": ("classifier_train", "classifier")}
# SLT-Net / CAM's fixed box threshold: Zhou et al.'s 20 % of the map's max, which Sec. 3.2 cites
CAM_THRESHOLD = 0.2


@dataclass
class Run:
    """A training run's folder: ``stage`` (a key of :data:`STAGES`) and ``options`` (its args.yaml)."""
    folder: Path
    stage: str
    options: dict = field(repr=False)

    @property
    def weights(self) -> Path:
        return self.folder / "model.pth"

    @property
    def words(self) -> str:
        return STAGES[self.stage][1]

    @property
    def method(self) -> str:
        return STAGES[self.stage][0].split("/")[0]


def _train_parsers() -> dict:
    import sltnet.options
    import spol.options

    return {name: make for module in (spol.options, sltnet.options) for name, make in module.PARSERS.items()
            if name in STAGES}


def stage_of_options(options: dict) -> str | None:
    """The training stage whose options ``options`` (an args.yaml) are: the stage whose parser has every
    one of them and the fewest others (an option added to a stage after the run keeps the run its
    own); None when no stage, or two equally, fit."""
    keys = set(options) - {"config"}
    fits = []
    for name, make in _train_parsers().items():
        dests = {a.dest for a in make()._actions} - {"help", "config"}
        if keys <= dests:
            fits.append((len(dests - keys), name))
    fits.sort()
    if not fits or (len(fits) > 1 and fits[0][0] == fits[1][0]):
        return None
    return fits[0][1]


def check_source(run, checkpoint) -> None:
    """One of a run folder and a checkpoint file is given, else one ``DataError`` line."""
    if (run is None) == (checkpoint is None):
        raise DataError("give a run folder (--run) or a SPOL seg checkpoint file (--checkpoint)"
                        + (", not both" if run is not None else ""))


def read_run(folder, option: str = "--run") -> Run:
    """The training run in ``folder`` (named by ``option`` in the messages), or one ``DataError`` line:
    not there, a file, a test step's folder, a folder no run of this project wrote, a run that has not
    finished (no model.pth), options of no training stage."""
    from utils.engine.rundir import holds_project_run
    from utils.engine.stage import training_options

    folder = Path(folder)
    if not folder.exists():
        raise DataError.at(folder, None, f"{option}: not found")
    if not folder.is_dir():
        raise DataError.at(folder, None, f"{option}: is a file; {option} names a training run's folder "
                           "(a SPOL seg state dict without its folder: --checkpoint FILE --backbone ...)")
    if not (folder / TRAIN_ARGS).is_file() and (folder / TEST_ARGS).is_file():
        raise DataError.at(folder, None, f"{option}: holds a test step's outputs ({TEST_ARGS}), not a training run: "
                           "pass the training run's folder (the test step's parent)")
    if not holds_project_run(folder):
        raise DataError.at(folder, None, f"{option}: not a training run of this project (no model.pth beside "
                           f"the {TRAIN_ARGS} a train.py writes): pass a folder a stage's train.py wrote, e.g. "
                           "output/spol/cub/seg")
    found = training_options(folder)
    options = found[1] if found else {}
    if not (folder / "model.pth").is_file():
        raise DataError.at(folder, None, f"{option}: the training run has not finished (no model.pth, only "
                           "checkpoint.pth): the same train.py command resumes it")
    stage = stage_of_options(options)
    if stage is None:
        raise DataError.at(found[0] if found else folder, None, "holds the options of no training stage of "
                           "this version: pass a folder a stage's train.py wrote")
    return Run(folder, stage, options)


def run_kind(run: Run, kind: str | None) -> str:
    """The kind ``run`` localizes with: ``kind`` when given (one ``DataError`` line when the run cannot),
    else its own: a SPOL seg run ``spol``, an SLT-Net regressor run ``sltnet-final``, a localizer run
    ``cam`` when trained without SMT, ACAM and VST (plain CAM), else ``sltnet-map``."""
    kinds = RUN_KINDS.get(run.stage)
    if kinds is None:
        script = STAGES[run.stage][0]
        hint = (" give it as --classifier-run, with the run that localizes as --run"
                if run.stage in ("cls_train", "classifier_train") else "")
        raise DataError.at(run.folder, None, f"--run: is {run.words} ({script}), which does not localize: pass a "
                           f"SPOL seg run, an SLT-Net localizer or regressor run;{hint}".rstrip(";"))
    if kind is None:
        if run.stage == "localizer_train" and not any(run.options.get(k, True) for k in ("smt", "acam", "vst")):
            return "cam"
        return kinds[0]
    if kind not in kinds:
        raise DataError.at(run.folder, None, f"--kind {kind}: the folder is {run.words}, whose kinds are "
                           f"{', '.join(kinds)}")
    return kind


def find_classifier(run: Run | None, kind: str, given: str | None) -> Run | None:
    """The classifier run of ``kind`` (:data:`CLASSIFIER_OF`): ``given`` (``--classifier-run``; ``none``:
    none), else the run's sibling stage folder when it holds one. ``sltnet-final`` needs one; a
    given folder of another stage is one ``DataError`` line."""
    if kind not in CLASSIFIER_OF:
        if given not in (None, "none"):
            raise DataError(f"--classifier-run: kind {kind} classifies with its own localizer's logits")
        return None
    stage, sibling = CLASSIFIER_OF[kind]
    if given == "none":
        if kind == "sltnet-final":
            raise DataError("--classifier-run none: sltnet-final takes its class from a classifier run (Fig. 2c)")
        return None
    if given is None:
        beside = run.folder.parent / sibling if run is not None else None
        if beside is None or not (beside / "model.pth").is_file():
            if kind == "sltnet-final":
                raise DataError.at(beside or Path("--classifier-run"), None, "no SLT-Net classifier run here: "
                                   "sltnet-final takes its class from one (sltnet/classifier/train.py): "
                                   "pass --classifier-run DIR")
            return None
        given = beside
    classifier = read_run(given, "--classifier-run")
    if classifier.stage != stage:
        raise DataError.at(classifier.folder, None, f"--classifier-run: is {classifier.words}; kind {kind} takes "
                           f"{STAGES[stage][1]} ({STAGES[stage][0]})")
    return classifier


# ----------------------------------------------------------------------------- the box threshold
@dataclass(frozen=True)
class Threshold:
    """The box threshold, the rule that boxes the map with it (``spol``: SPOL's ``map > t``; ``choe``,
    ``zhou``: relative to the map's max, :mod:`sltnet.boxes`), and why it is that one."""
    value: float | None
    rule: str | None
    why: str


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_yaml(path: Path) -> dict | None:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def spol_chosen_threshold(run: Run) -> tuple[float, str, bool] | None:
    """The box threshold spol/seg/test.py chose for the wsol protocol on its ``--threshold-split``:
    ``(threshold, split, held_out)``, ``held_out`` when that split is neither the one the run trained on
    nor the one the step scored; None when the step chose none there (or was run at another input size)."""
    tested = _read_yaml(run.folder / TEST_ARGS)
    if not tested or not tested.get("threshold_split"):
        return None
    for name in ("wsol", "resize"):
        metrics = _read_json(run.folder / name / "metrics.json")
        if metrics and isinstance(metrics.get("threshold_used"), (int, float)) \
                and tested.get("input_size") == run.options.get("input_size"):
            split = str(tested["threshold_split"])
            held_out = split not in (run.options.get("split"), tested.get("split"))
            return float(metrics["threshold_used"]), split, held_out
    return None


def sltnet_chosen_threshold(run: Run) -> tuple[float, str, str] | None:
    """The threshold ``sltnet/localizer/test.py --box-threshold best`` chose on the training split
    (``<run>/train/boxes.json``) for the GT-free top-K ACAM map: ``(threshold, box rule, split)``, or None."""
    meta = _read_json(run.folder / "train" / "boxes.json")
    if not meta or not str(meta.get("box_threshold_source", "")).startswith("best") \
            or meta.get("teacher_map", "acam") != "acam" or not isinstance(meta.get("box_threshold"), (int, float)):
        return None
    return float(meta["box_threshold"]), str(meta.get("box_rule", "zhou")), str(meta.get("split", "train"))


def choose_threshold(kind: str, run: Run | None, given: float | None, dataset: str | None, *,
                     crops: bool = False) -> Threshold:
    """The box threshold of ``kind`` and why: ``--threshold`` when given; else one the run's test step chose
    on a held-out split (spol/seg/test.py's wsol protocol with ``--threshold-split`` a split the run
    neither trained nor was scored on; for the whole-image geometry only, ``crops`` False); else the
    method's fixed one: SPOL's 0.2 CUB / 0.8 ImageNet (``configs/spol_<dataset>.yaml``), the SLT-Net /
    CAM run's own ``box_threshold`` (its args.yaml; CAM's 20 % of the map's max by default). A
    threshold chosen on a split that is not held out (the training split) is named in the reason, not
    used."""
    if kind == "sltnet-final":
        if given is not None:
            raise DataError("--threshold: kind sltnet-final takes its box from the regressor (Fig. 2c); no "
                            "threshold makes it")
        return Threshold(None, None, "none: the regressor predicts the box (Fig. 2c)")
    if kind == "spol":
        if given is not None:
            return Threshold(given, "spol", "--threshold (SPOL's rule: sigmoid map > T, largest contour)")
        chosen = spol_chosen_threshold(run) if run is not None and not crops else None
        if chosen and chosen[2]:
            return Threshold(chosen[0], "choe", f"chosen by spol/seg/test.py on the held-out split '{chosen[1]}' "
                             f"(best IoU-50, {run.folder / 'wsol' / 'metrics.json'}); Choe et al.'s rule")
        from spol.options import spol_config

        if dataset is None:
            if run is None:
                raise DataError("--checkpoint: pass --dataset cub or --dataset imagenet (SPOL's fixed threshold, "
                                "0.2 or 0.8), or --threshold")
            raise DataError.at(run.folder / TRAIN_ARGS, None, "names no dataset with a fixed SPOL threshold "
                               "(--dataset cub or imagenet, or --layout cub or ilsvrc): pass --threshold")
        value = float(spol_config(dataset, "seg_test")["spol_threshold"])
        why = f"SPOL's fixed threshold for {dataset} (configs/spol_{dataset}.yaml seg_test.spol_threshold)"
        if chosen:
            why += (f"; the test step's {chosen[0]:g} was chosen on split '{chosen[1]}', which is not held out "
                    f"(--threshold {chosen[0]:g} uses it)")
        return Threshold(value, "spol", why + "; sigmoid map > T, largest contour")
    rule = str(run.options.get("box_rule") or "zhou")
    if given is not None:
        return Threshold(given, rule, f"--threshold, of the map's max (the run's box rule {rule})")
    fixed = run.options.get("box_threshold")
    if isinstance(fixed, (int, float)) and not isinstance(fixed, bool) and 0 <= fixed <= 1:
        value = float(fixed)
        why = (f"the run's box_threshold ({run.folder / TRAIN_ARGS}), of the map's max (CAM's 20 % by default, "
               f"Zhou et al.); the run's box rule {rule}")
    else:
        value = CAM_THRESHOLD
        why = f"CAM's fixed 20 % of the map's max (Zhou et al.); the run's box rule {rule}"
    chosen = sltnet_chosen_threshold(run) if kind == "sltnet-map" and run.options.get("acam", True) else None
    if chosen:
        why += (f"; the localizer test's {chosen[0]:g} was chosen on split '{chosen[2]}', which is not held out "
                f"(--threshold {chosen[0]:g} uses it)")
    return Threshold(value, rule, why)


def spol_dataset(run: Run | None, given: str | None) -> str | None:
    """``cub`` or ``imagenet`` (SPOL's fixed threshold): ``--dataset`` for a checkpoint, the run's else."""
    if run is None:
        return given
    from spol.options import DATASET_OF_LAYOUT

    return run.options.get("dataset") or DATASET_OF_LAYOUT.get(run.options.get("layout"))


def class_names(classifier: Run | None, num_classes: int) -> tuple[list[str] | None, str]:
    """The names of the ``num_classes`` classes of ``classifier``'s dataset (``utils.data.layouts.class_names``:
    CUB classes.txt, ILSVRC wnids, metadata class_names.txt) and where they come from; ``(None, why)``
    when its dataset is not here or does not have that many classes."""
    if classifier is None:
        return None, "no classifier"
    from utils.data.layouts import class_names as read_names

    root, layout = classifier.options.get("data_root"), classifier.options.get("layout")
    if not root or layout is None:
        return None, f"{classifier.folder / TRAIN_ARGS} names no dataset"
    try:
        names = read_names(root, layout, metadata_root=classifier.options.get("metadata_root"))
    except (DataError, ValueError, OSError) as exc:
        return None, f"its dataset is not readable here ({' '.join(str(exc).split())})"
    if len(names) != num_classes:
        return None, f"its dataset {root} has {len(names)} classes, the classifier {num_classes}"
    return names, f"{root} (layout {layout})"


__all__ = ["KINDS", "Run", "Threshold", "check_source", "read_run", "run_kind", "find_classifier", "choose_threshold",
           "spol_dataset", "class_names", "stage_of_options"]
