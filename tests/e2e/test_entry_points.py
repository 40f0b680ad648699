"""Every stage script answers --help both ways it is documented to run.

``cd spol/cam && python3 train.py --help`` (the stage folder first on sys.path and as the
cwd: catches module files that shadow a top-level package) and
``python -m spol.cam.train --help`` from the repository root. The scripts are found by
glob, so a new stage is covered as soon as it exists.

Importing torch costs seconds of CPU per process, so the scripts run in two batch
processes (one per way), each running every script as ``__main__`` with ``runpy`` after
removing every module loaded from the repository, so no script sees another's imports.
The batch processes run with ``python -S`` and site-packages on ``PYTHONPATH``: no ``.pth`` file
runs, so an installed copy of the repository's packages (an editable install's finder) is never
found, and a script run by its path finds them by its own first lines or fails.
"""
import json
import os
import site
import subprocess
import sys

import pytest

from utils.paths import REPO_ROOT

PATTERNS = ("spol/*/train.py", "spol/*/test.py", "sltnet/*/train.py", "sltnet/*/test.py")
SCRIPTS = sorted({p for pattern in PATTERNS for p in REPO_ROOT.glob(pattern)})

RUNNER = r'''
import contextlib, io, json, os, runpy, sys, traceback
mode, root, scripts = sys.argv[1], sys.argv[2], sys.argv[3:]
import torch, torchvision  # shared by every script: imported once
base_path = list(sys.path)
results = {}
for script in scripts:
    for name, mod in list(sys.modules.items()):  # forget everything loaded from the repository
        inside = os.path.realpath(getattr(mod, "__file__", None) or "/").startswith(root + os.sep)
        if inside or name.split(".")[0] in ("spol", "sltnet", "utils", "network"):
            del sys.modules[name]
    folder = os.path.dirname(script)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if mode == "script":  # python3 train.py --help, run from the stage folder
                os.chdir(folder)
                sys.path[:] = [folder] + base_path[1:]
                sys.argv = [os.path.basename(script), "--help"]
                runpy.run_path(os.path.basename(script), run_name="__main__")
            else:                 # python -m spol.cam.train --help, run from the repository root
                os.chdir(root)
                sys.path[:] = [root] + base_path[1:]
                module = os.path.relpath(script, root)[:-3].replace(os.sep, ".")
                sys.argv = [script, "--help"]
                runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            err.write(str(exc.code))
    except BaseException:
        code = 1
        err.write(traceback.format_exc())
    text = out.getvalue()
    results[script] = {"code": code, "stdout": text[:1500], "has_config": "--config" in text,
                       "stderr": err.getvalue()[-4000:]}
print("RESULTS " + json.dumps(results))
'''


def without_install(*first: str) -> dict:
    """The environment of a ``python -S`` process that sees site-packages' modules but runs none of
    their ``.pth`` files (no installed copy of this repository), with ``first`` ahead of them."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([*first, *site.getsitepackages()])
    return env


@pytest.fixture(scope="module")
def help_runs():
    env = without_install()
    root = os.path.realpath(REPO_ROOT)
    procs = {mode: subprocess.Popen([sys.executable, "-S", "-c", RUNNER, mode, root,
                                     *[os.path.realpath(s) for s in SCRIPTS]],
                                    cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for mode in ("script", "module")}
    results = {}
    for mode, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        lines = [line for line in stdout.splitlines() if line.startswith("RESULTS ")]
        assert proc.returncode == 0 and lines, f"{mode} runner failed:\n{stderr[-3000:]}"
        results[mode] = json.loads(lines[-1][len("RESULTS "):])
    return results


if SCRIPTS:
    @pytest.mark.parametrize("script", SCRIPTS, ids=[str(s.relative_to(REPO_ROOT)) for s in SCRIPTS])
    @pytest.mark.parametrize("mode", ["script", "module"])
    def test_help_exits_cleanly(help_runs, script, mode):
        res = help_runs[mode][os.path.realpath(script)]
        rel = script.relative_to(REPO_ROOT)
        how = (f"cd {rel.parent} && python3 {rel.name} --help" if mode == "script"
               else f"python -m {'.'.join(rel.with_suffix('').parts)} --help")
        assert res["code"] == 0, f"`{how}` exited {res['code']}:\n{res['stderr']}"
        assert res["stdout"].startswith("usage:") and res["has_config"], res["stdout"]
else:
    def test_help_exits_cleanly():
        pytest.skip("no stage scripts yet")


def test_runner_catches_a_shadowing_module_and_a_crash(tmp_path):
    """The batch runner itself can fail: a stage folder with its own utils.py, a script that raises."""
    good = "import argparse\nfrom utils.config import parse_args\n" \
           "parse_args(argparse.ArgumentParser(), stage='x')\n"
    for stage, text in {"good": good, "shadow": good, "crash": "raise RuntimeError('boom')\n"}.items():
        (tmp_path / "pkg" / stage).mkdir(parents=True)
        (tmp_path / "pkg" / stage / "train.py").write_text(text)
    (tmp_path / "pkg" / "shadow" / "utils.py").write_text("")  # shadows the utils package
    root = os.path.realpath(tmp_path)
    scripts = [os.path.join(root, "pkg", s, "train.py") for s in ("good", "shadow", "crash")]
    proc = subprocess.run([sys.executable, "-S", "-c", RUNNER, "script", root, *scripts], capture_output=True,
                          text=True, timeout=300, env=without_install(str(REPO_ROOT)))
    results = json.loads(proc.stdout.split("RESULTS ", 1)[1])
    assert results[scripts[0]]["code"] == 0 and results[scripts[0]]["has_config"]
    assert results[scripts[1]]["code"] == 1 and "utils" in results[scripts[1]]["stderr"]
    assert results[scripts[2]]["code"] == 1 and "boom" in results[scripts[2]]["stderr"]


@pytest.mark.parametrize("script", ["demo.py", "benchmarks/bench_evaluator.py", "benchmarks/bench_inference.py",
                                    "benchmarks/bench_train.py", "benchmarks/bench_seg_test.py", "tests/toy_train.py"])
def test_scripts_outside_the_packages_run_by_their_path(script, tmp_path):
    """``python3 benchmarks/bench_train.py --help`` from any folder, with no installed copy of the packages."""
    proc = subprocess.run([sys.executable, "-S", str(REPO_ROOT / script), "--help"], cwd=tmp_path,
                          env=without_install(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("usage:"), proc.stdout[:500]
