"""The stage scripts' command lines: fast --help, the program in the usage line, defaults shown,
training-only options only on training scripts, config files that still fit the test steps.

``--help`` must not wait for torch (seconds of imports): the parsers are built by modules that
import no torch, and each script parses before its heavy imports (``utils.config.parse_early``).
Rather than a timed test, a subprocess checks which modules are loaded.
"""
import json
import os
import re
import subprocess
import sys

import pytest

from utils.config import TRAIN_ONLY, HelpFormatter, parse_args
from utils.errors import DataError
from utils.paths import CONFIG_DIR, REPO_ROOT

SCRIPTS = sorted(str(p.relative_to(REPO_ROOT)) for pattern in ("spol/*/t*.py", "sltnet/*/t*.py")
                 for p in REPO_ROOT.glob(pattern) if p.stem in ("train", "test"))
HEAVY = ("torch", "torchvision", "cv2", "matplotlib")
# options that only a training run reads: a test script must not offer them
TRAIN_FLAGS = ["--" + name.replace("_", "-") for name in TRAIN_ONLY] + [
    "--no-resume", "--lr", "--momentum", "--weight-decay", "--backbone-lr-mult", "--nesterov", "--lr-schedule"]


def stage_of(script: str) -> str:
    """spol/cam/train.py -> cam_train"""
    parts = script[:-3].split("/")
    return f"{parts[1]}_{parts[2]}"


def parser_of(script: str):
    import sltnet.options
    import spol.options

    return (spol.options if script.startswith("spol/") else sltnet.options).PARSERS[stage_of(script)]()


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


HELP_RUNNER = r'''
import contextlib, io, json, runpy, sys
heavy, scripts = sys.argv[1].split(","), sys.argv[2:]
results = {}
for script in scripts:
    out = io.StringIO()
    sys.argv = [script, "--help"]
    code = None
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    results[script] = {"code": code, "help": out.getvalue(),
                       "heavy": [m for m in heavy if m in sys.modules]}
print("RESULTS " + json.dumps(results))
'''


@pytest.fixture(scope="module")
def helps():
    """Every script's --help, run one after the other in ONE process, noting the heavy modules
    loaded after each (once one loads torch, every later script would show it too)."""
    proc = subprocess.run([sys.executable, "-c", HELP_RUNNER, ",".join(HEAVY), *SCRIPTS], cwd=REPO_ROOT,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.split("RESULTS ", 1)[1])


def test_every_stage_script_is_covered():
    assert len(SCRIPTS) == 12, SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_answers_before_torch_loads(helps, script):
    res = helps[script]
    assert res["code"] in (0, None), res
    assert res["heavy"] == [], f"{script} --help loaded {res['heavy']} before answering"


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_starts_with_the_program_and_shows_defaults(helps, script):
    text = helps[script]["help"]
    assert text.startswith(f"usage: {script} "), text[:200]
    flat = " ".join(text.split())
    parser = parser_of(script)
    # an option without a word about its default gets "(default: X)", with the stage's own value
    assert f"--batch-size BATCH_SIZE images per GPU (per process) (default: {parser.get_default('batch_size')})" \
        in flat
    assert "--seed SEED (default: 0)" in flat
    assert "--layout {cub,ilsvrc,metadata}" in flat and "(default: cub)" in flat


@pytest.mark.parametrize("script", SCRIPTS)
def test_training_options_only_on_training_scripts(helps, script):
    offered = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", helps[script]["help"]))
    listed = {flag for flag in TRAIN_FLAGS if flag in offered}
    if script.endswith("test.py"):
        assert listed == set(), f"{script} offers training options {sorted(listed)}"
        with pytest.raises(SystemExit):
            parse_args(parser_of(script), ["--epochs", "2"], stage=stage_of(script))
    else:
        assert {"--epochs", "--resume", "--no-resume", "--save-every-steps", "--overwrite", "--lr"} <= listed


def test_parser_modules_import_no_torch():
    """Building every parser loads none of the heavy modules (the 2 s --help target rests on it)."""
    code = ("import sys, json\n"
            "import spol.options, sltnet.options, utils.options, utils.config\n"
            "for mod in (spol.options, sltnet.options):\n"
            "    for build in mod.PARSERS.values(): build().format_help()\n"
            f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_option_names_shared_with_the_heavy_modules_agree():
    """The light modules hold the names the command line offers; the heavy ones use the same."""
    from sltnet import boxes, model, options
    from spol import pseudo_mask
    from spol.options import PSEUDO_MASK_WORK_SIZE

    assert model.BACKBONES is options.BACKBONES and boxes.BOX_RULES is options.BOX_RULES
    assert PSEUDO_MASK_WORK_SIZE == pseudo_mask.WORK_SIZE
    assert parser_of("spol/cam/test.py").get_default("resize_size") == pseudo_mask.WORK_SIZE
    assert parser_of("spol/cam/test.py").get_default("band") == [pseudo_mask.BAND_LOW, pseudo_mask.BAND_HIGH]
    assert parser_of("spol/cam/test.py").get_default("min_contour_area") == pseudo_mask.MIN_CONTOUR_AREA
    from spol import losses
    assert parser_of("spol/seg/train.py").get_default("target_threshold") == losses.TARGET_THRESHOLD
    from network import backbones
    from utils.options import ARCHS, OUTPUT_STRIDE_BACKBONES, OUTPUT_STRIDES
    assert set(ARCHS) <= set(backbones.NAMES)  # every classifier offered has its ImageNet weight file
    assert OUTPUT_STRIDES == backbones.OUTPUT_STRIDES and OUTPUT_STRIDE_BACKBONES == tuple(backbones.RESNETS)
    from utils import options as utils_options
    from utils.evaluation import evaluate

    assert utils_options.EVALUATE_PROTOCOLS == evaluate.PROTOCOLS
    assert evaluate.get_args_parser is utils_options.evaluate_parser


@pytest.mark.parametrize("module", ["utils.evaluation", "utils.evaluation.evaluate"])
def test_evaluate_module_help_answers_before_torch_loads(module):
    """``python -m utils.evaluation --help`` (and ``python -m utils.evaluation.evaluate --help``): the
    program in the usage line, defaults, no torch."""
    code = ("import contextlib, io, runpy, sys\n"
            "sys.argv = ['utils/evaluation/evaluate.py', '--help']\n"
            "out = io.StringIO()\n"
            "try:\n    with contextlib.redirect_stdout(out):\n"
            f"        runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
            "except SystemExit as exc:\n    print(out.getvalue()); print('EXIT', exc.code, 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.startswith("usage: python -m utils.evaluation "), (proc.stdout[:300], proc.stderr[-2000:])
    assert proc.stdout.strip().endswith("EXIT 0 False")
    assert "(default: 0.001)" in proc.stdout and "--protocol {wsol,spol,spol-official,resize,center_crop,spol_official}" in proc.stdout


def test_help_formatter_keeps_a_stated_default_and_adds_a_missing_one():
    import argparse

    p = argparse.ArgumentParser(prog="x.py", formatter_class=HelpFormatter)
    p.add_argument("--a", type=int, default=3, help="plain")
    p.add_argument("--b", type=str, default=None, help="size (default: per backbone)")
    p.add_argument("--c", type=float, default=0.5)
    p.add_argument("--d", required=True)
    flat = " ".join(p.format_help().split())
    assert "--d D" in flat and "(default: None)" not in flat
    assert "--a A plain (default: 3)" in flat
    assert "--b B size (default: per backbone)" in flat and "per backbone) (default" not in flat
    assert "--c C (default: 0.5)" in flat


def test_top_level_training_keys_are_skipped_by_a_test_step_not_in_its_section(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 3\nlog_every: 5\nresume: false\nbatch_size: 8\n")
    args = parse_args(parser_of("spol/cam/test.py"), ["--config", str(cfg)], stage="cam_test")
    assert args.batch_size == 8 and not hasattr(args, "epochs")
    train = parse_args(parser_of("spol/cam/train.py"), ["--config", str(cfg)], stage="cam_train")
    assert (train.epochs, train.log_every, train.resume) == (3, 5, False)
    cfg.write_text("cam_test:\n  epochs: 3\n")             # in the test step's own section: an error
    with pytest.raises(DataError, match=r"c.yaml:2: unknown key 'epochs' in section 'cam_test'"):
        parse_args(parser_of("spol/cam/test.py"), ["--config", str(cfg)], stage="cam_test")
    cfg.write_text("epoch: 3\n")                             # a typo at the top level stays an error
    with pytest.raises(DataError, match="unknown key 'epoch'"):
        parse_args(parser_of("spol/cam/test.py"), ["--config", str(cfg)], stage="cam_test")


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))
def test_shipped_configs_parse_for_every_stage(config, capsys):
    """Every stage of a method reads each of its shipped configs (the demo's: both methods') without an error."""
    method = config.split("_")[0]
    for script in SCRIPTS:
        if method in ("spol", "sltnet") and not script.startswith(method + "/"):
            continue
        parse_args(parser_of(script), ["--config", str(CONFIG_DIR / config)], stage=stage_of(script))
    assert capsys.readouterr().err == ""


def test_a_bad_config_is_one_error_line_before_torch_loads(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("cam_test:\n  epochs: 3\n")
    code = ("import runpy, sys\n"
            "sys.argv = ['spol/cam/test.py', '--config', sys.argv[1]]\n"
            "try:\n    runpy.run_path('spol/cam/test.py', run_name='__main__')\n"
            "except SystemExit as exc:\n    print('EXIT', exc.code, 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(cfg)], cwd=REPO_ROOT, env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.strip() == "EXIT 2 False", (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "bad.yaml:2" in lines[0], lines


# one vocabulary: both methods name the model, the input geometry and the output folder alike
VOCABULARY = ("--backbone", "--resize-size", "--input-size", "--dataset")
OTHER_SPELLINGS = ("--arch", "--resize", "--crop", "--dataset-name")


@pytest.mark.parametrize("script", SCRIPTS)
def test_one_vocabulary_and_no_other_spelling(helps, script, capsys):
    """Both methods name the model and the input geometry alike; no script takes another spelling of
    them, nor a prefix of an option for the option (``--resize`` is not ``--resize-size``)."""
    offered = set(re.findall(r"(?<![\w-])--[a-z][\w-]*(?= |,|\n|=)", helps[script]["help"]))
    assert not offered & set(OTHER_SPELLINGS), f"{script} offers {sorted(offered & set(OTHER_SPELLINGS))}"
    assert {"--dataset", "--resize-size"} <= offered, script  # every stage script has both
    for other in OTHER_SPELLINGS:
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            parse_args(parser_of(script), [other, "40"], stage=stage_of(script))
        err = capsys.readouterr().err.strip()
        assert info.value.code == 2 and err.startswith(f"error: unrecognized arguments: {other} 40"), (script, err)


def test_other_keys_in_a_config_are_errors(tmp_path):
    cfg = tmp_path / "old.yaml"
    cfg.write_text("cls_train:\n  arch: resnet50\n")
    with pytest.raises(DataError, match=r"old\.yaml:2: unknown key 'arch' in section 'cls_train'"):
        parse_args(parser_of("spol/cls/train.py"), ["--config", str(cfg)], stage="cls_train")
