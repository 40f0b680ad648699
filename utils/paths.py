"""Repository-anchored paths, so that no default depends on the current directory, and the
hand-off between stages: where a stage writes (``stage_dir``), the names of the files every step
writes beside its outputs (``TRAIN_ARGS``, ``TEST_ARGS``, ``METRICS``), and the one error for an
output of another stage that is not there (``require_output``)."""
from __future__ import annotations

import os
from pathlib import Path

from utils.errors import DataError, MissingFileError

REPO_ROOT = Path(__file__).resolve().parent.parent
OUTPUT_ROOT = REPO_ROOT / "output"
RESOURCE_DIR = REPO_ROOT / "resource"
DATASET_DIR = REPO_ROOT / "dataset"
CONFIG_DIR = REPO_ROOT / "configs"

# What a step writes in its --output-dir besides its outputs: its resolved options (``--config`` of
# that file repeats the step; a training run's are what its test steps read back, so a test step's
# have a name of their own, also where both share a folder), and a test step's numbers
# (metrics.json; metrics.txt: the same as a table).
TRAIN_ARGS = "args.yaml"
TEST_ARGS = "test_args.yaml"
METRICS = ("metrics.json", "metrics.txt")


def stage_dir(method: str, dataset: str, stage: str, *, backbone: str | None = None) -> Path:
    """Default output folder of a stage: ``output/<method>/<dataset>[/<backbone>]/<stage>``
    (SPOL: ``output/spol/cub/cam``; SLT-Net, one folder per backbone: ``output/sltnet/cub/vgg16/localizer``)."""
    folder = OUTPUT_ROOT / method / dataset
    return (folder / backbone if backbone else folder) / stage


def missing_output(path: str | os.PathLike, producer: str, what: str = "") -> MissingFileError:
    """The error for an output of another stage that is not there: one line naming the file, the
    stage script that writes it and what to do."""
    return MissingFileError.at(path, None, f"{what + ' ' if what else ''}not found: run {producer} first "
                               "(it writes this), or point to the output of a run of it")


def require_output(path: str | os.PathLike, producer: str, what: str = "") -> Path:
    """``path`` (a file or a folder) written by the stage script ``producer`` must exist, else
    ``missing_output``'s error; returns it as a ``Path``."""
    path = Path(path)
    if not path.exists():
        raise missing_output(path, producer, what)
    return path


def check_output_path(path: str | os.PathLike, option: str, *, folder: bool = True) -> Path:
    """Before any work: ``path`` can be written as the folder (``folder=True``) or the file an
    ``option`` names: it is not a file where a folder is meant (or a folder where a file is), no part
    of it is a file, it is no broken symbolic link or loop, and the folder that holds it (or the
    nearest one that exists) is writable. One ``DataError`` line naming the path and the option."""
    path = Path(path).expanduser()
    if path.is_symlink() and not path.exists():
        raise DataError.at(path, None, f"{option}: a broken symbolic link or a symbolic link loop")
    if path.exists():
        if folder and not path.is_dir():
            raise DataError.at(path, None, f"{option}: is a file, not a folder")
        if not folder and path.is_dir():
            raise DataError.at(path, None, f"{option}: is a folder; {option} names a file")
    probe = path if folder else path.parent
    while not probe.exists() and not probe.is_symlink() and probe.parent != probe:
        probe = probe.parent
    if probe.is_symlink() and not probe.exists():
        raise DataError.at(probe, None, f"{option} {path}: lies under a broken symbolic link or a symbolic link loop")
    if not probe.is_dir():
        raise DataError.at(probe, None, f"{option} {path}: lies under this file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise DataError.at(probe, None, f"{option}: this folder is not writable (permission denied)")
    return path
