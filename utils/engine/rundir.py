"""Output folders that never mix two runs and never lose a file: the folder's lock and a training
run's claim on it (``claim_output_dir``), the checks before any work (``check_output_dir``), a
training run's identity (``run_identity``, ``check_identity``, ``check_folder_run``), a test step's
previous outputs kept aside until it ends (``protect_outputs``, ``restore_outputs``, ``drop_outputs``)
and a stage script's ``__main__`` (``run_cli``: one ``error:`` line; Ctrl-C's, ``interrupted``)."""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from utils.config import is_training, parse_args, report_error
from utils.errors import DataError, RunError
from utils.paths import TRAIN_ARGS

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking
    fcntl = None

LOCK_NAME = ".lock"
# utils.io.atomic_write's temporary files: tempfile.mkstemp(prefix=".<name>.", suffix=".tmp")
STALE_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
PREVIOUS_PREFIX = ".previous."
RUN_FILES = ("checkpoint.pth", "model.pth")  # what makes a folder hold a training run

# Options that do not change what a training run computes: they may differ on resume.
# (batch_size: a resume maps the position to another batch size or process count.)
NOT_IDENTITY = {"output_dir", "config", "device", "workers", "resume", "overwrite", "log_every",
                "save_every_steps", "batch_size", "deterministic", "eval_workers", "mask_workers",
                "grid_images", "tensorboard"}

_held: dict[str, int] = {}


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# ----------------------------------------------------------------------------- lock
def _read_pid(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "?"
    except OSError:
        return "?"


def lock_dir(directory: str | os.PathLike) -> None:
    """Take the exclusive lock of ``directory`` for this process (idempotent; created when missing):
    ``fcntl.flock`` on ``<directory>/.lock``, which holds this PID, released by the operating system
    when the process ends, even on SIGKILL. One ``RunError`` line when another process holds it
    (naming its PID) or the folder cannot be written."""
    directory = Path(directory)
    key = os.path.realpath(directory)
    if key in _held or fcntl is None:
        return
    path = directory / LOCK_NAME
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:  # read-only folder or file system, a file in the way
        raise RunError.at(directory, None, f"cannot write in this output folder ({exc.strerror or exc}): "
                          "use another --output-dir") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RunError.at(directory, None, f"in use by another run (PID {_read_pid(path)}): wait for it to "
                          "end, or use another --output-dir") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[key] = fd


def unlock_dir(directory: str | os.PathLike) -> None:
    """Release this process's lock of ``directory`` (nothing when it holds none)."""
    fd = _held.pop(os.path.realpath(directory), None)
    if fd is not None:
        os.close(fd)


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete ``utils.io`` temporary files left by an interrupted write in ``directory``
    (call it only while holding the folder's lock: no live writer of this project is there)."""
    removed = []
    # the folder's own files only (checkpoints, logs, json): a test step's sub-folders are replaced
    # as a whole (protect_outputs), and walking a million pseudo masks at every start would be slow
    for entry in os.scandir(directory):
        if entry.is_file(follow_symlinks=False) and STALE_TEMP.match(entry.name):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except FileNotFoundError:
                pass
    if removed:
        print(f"notice: removed {len(removed)} temporary file(s) left in {directory} by an interrupted "
              f"run (e.g. {removed[0].name})", file=sys.stderr, flush=True)
    return removed


def _aside_name(directory: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = directory.with_name(f"{directory.name}.old-{stamp}")
    n = 1
    while candidate.exists():
        n += 1
        candidate = directory.with_name(f"{directory.name}.old-{stamp}-{n}")
    return candidate


def holds_project_run(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a training run this project wrote: a ``checkpoint.pth`` of
    ``utils.engine.Trainer`` (a dict with its ``stage`` and ``epoch`` entries), or a ``model.pth``
    beside the ``args.yaml`` a stage writes (a mapping of its options, ``output_dir`` among them)."""
    import yaml

    directory = Path(directory)
    if (directory / "checkpoint.pth").is_file():
        ck = _lazy_checkpoint(directory / "checkpoint.pth")
        if ck is not None and "stage" in ck and "epoch" in ck:
            return True
    if (directory / "model.pth").is_file() and (directory / TRAIN_ARGS).is_file():
        try:
            options = yaml.safe_load((directory / TRAIN_ARGS).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return False
        return isinstance(options, dict) and "output_dir" in options
    return False


def claim_output_dir(directory: str | os.PathLike, *, overwrite: bool = False) -> Path | None:
    """A training run's folder: lock ``directory`` for this run (rank 0 only), move an existing
    training run (a folder with ``RUN_FILES``) aside when ``overwrite``, remove stale temporary files.
    Returns where the old run went, if moved. A folder whose ``RUN_FILES`` this project did not write
    (``holds_project_run``) is refused with one ``RunError`` line, with or without ``overwrite``: the
    run would replace them, or move the folder holding them."""
    directory = Path(directory)
    if not _is_main():
        return None
    first = os.path.realpath(directory) not in _held
    present = [name for name in RUN_FILES if (directory / name).exists()]
    if first and present and not holds_project_run(directory):
        raise RunError.at(directory, None, f"holds {' and '.join(present)} that no run of this project wrote "
                          f"(no training checkpoint, no args.yaml beside it): "
                          + ("--overwrite moves aside only a run this project wrote; " if overwrite else
                             "a training run would replace it; ")
                          + "use another --output-dir")
    lock_dir(directory)
    moved = None
    if overwrite and first and any((directory / name).exists() for name in RUN_FILES):
        moved = _aside_name(directory)
        os.rename(directory, moved)
        unlock_dir(directory)  # its lock file went with the folder
        lock_dir(directory)
        print(f"--overwrite: the previous run in {directory} was moved to {moved}", file=sys.stderr, flush=True)
    if first:
        remove_stale_temps(directory)
    return moved


# Options that name a dataset folder: an output folder is never one of them, inside one, or around one.
DATA_ROOT_OPTIONS = ("data_root", "metadata_root", "threshold_data_root")


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output_dir(args) -> None:
    """Before any work: ``--output-dir`` can be a folder this run
    writes in (``utils.paths.check_output_path``: not a file, under no file, writable), and is not
    a data root, inside one, or around one (``DATA_ROOT_OPTIONS``; compared after resolving
    symbolic links). One ``RunError`` line naming both folders."""
    from utils.paths import check_output_path

    out = getattr(args, "output_dir", None)
    if not out:
        return
    check_output_path(out, "--output-dir")
    real = os.path.realpath(os.path.expanduser(out))
    for name in DATA_ROOT_OPTIONS:
        root = getattr(args, name, None)
        if not root:
            continue
        option = "--" + name.replace("_", "-")
        root_real = os.path.realpath(os.path.expanduser(root))
        if _inside(real, root_real):
            where = "is" if real == root_real else "lies inside"
            raise RunError.at(out, None, f"--output-dir {where} the dataset folder {option} {root}: a run never "
                              "writes into its data (and --overwrite would move it aside): use another --output-dir")
        if _inside(root_real, real):
            raise RunError.at(out, None, f"--output-dir holds the dataset folder {option} {root}: a run never "
                              "writes around its data (and --overwrite would move it aside): use another --output-dir")


def interrupted(args) -> RunError:
    """The one line a Ctrl-C ends a stage with: for a training stage, the checkpoint it resumes from
    (epoch and step) with the same command, or that none was written yet; for a test step, that its
    previous outputs are back."""
    out = getattr(args, "output_dir", None) if args is not None else None
    if out is None:
        return RunError("interrupted (Ctrl-C) before the run started: nothing was written")
    if not is_training(args):
        return RunError.at(out, None, "interrupted (Ctrl-C): this test step's previous outputs are back as they "
                           "were; the same command runs it again")
    checkpoint = Path(out) / "checkpoint.pth"
    ck = _lazy_checkpoint(checkpoint) if checkpoint.is_file() else None
    if ck is None or "epoch" not in ck:
        return RunError.at(out, None, "interrupted (Ctrl-C) before the first checkpoint: the same command starts the "
                           "run again from the beginning (--save-every-steps N saves within an epoch)")
    return RunError.at(checkpoint, None, f"interrupted (Ctrl-C): the same command resumes the run from this "
                       f"checkpoint (epoch {int(ck['epoch'])}, step {int(ck.get('step', 0))}, global step "
                       f"{int(ck.get('global_step', 0))})")


# ----------------------------------------------------------------------------- identity
def records_hash(records) -> str:
    """A hash of a dataset's annotations as read: image ids, labels, boxes, sizes, class count."""
    h = hashlib.blake2b(digest_size=12)
    h.update(str(getattr(records, "num_classes", "")).encode())
    for r in records:
        h.update(f"{r.image_id}\0{int(r.label)}\0{tuple(r.size)}\0".encode())
        boxes = getattr(r, "boxes", None)
        if boxes is not None:
            # the array's bytes in C order (an ImageNet training image has none: shape (0, 4))
            h.update(np.ascontiguousarray(boxes).tobytes() if hasattr(boxes, "tobytes") else str(boxes).encode())
    return h.hexdigest()


def run_identity(args, stage: str = "", dataset=None) -> dict[str, Any]:
    """The resolved options that change the result of a training run, and its dataset."""
    from utils.config import args_to_dict

    values = args_to_dict(args)
    ident: dict[str, Any] = {"stage": stage}
    for key in sorted(values):
        if key in NOT_IDENTITY:
            continue
        value = values[key]
        if key in ("data_root", "metadata_root") and value:
            value = os.path.realpath(value)
        ident[key] = value
    records = getattr(dataset, "records", None)
    if records is not None:
        ident["dataset annotations (hash)"] = records_hash(records)
    return ident


def _lazy_checkpoint(checkpoint: str | os.PathLike) -> dict | None:
    """A checkpoint read lazily (memory-mapped: the tensors are not loaded), or None."""
    import torch

    try:
        ck = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable: the Trainer's load reports it with the file's name
        return None
    return ck if isinstance(ck, dict) else None


def saved_identity(checkpoint: str | os.PathLike) -> dict | None:
    """The identity stored in a checkpoint, or None (none stored, or not a checkpoint)."""
    ck = _lazy_checkpoint(checkpoint)
    ident = ck.get("identity") if ck else None
    return ident if isinstance(ident, dict) and "stage" in ident else None


def resume_position(checkpoint, ck: dict, batch_size: int, world_size: int) -> int:
    """The step of the checkpoint's epoch to resume at with ``batch_size`` x ``world_size``:
    the samples done must fill whole global batches, else a one-line ``RunError``."""
    step = int(ck.get("step", 0))
    old_b, old_w = int(ck.get("batch_size", batch_size)), int(ck.get("world_size", world_size))
    if not step or (old_b, old_w) == (batch_size, world_size):
        return step
    done, global_batch = step * old_b * old_w, batch_size * world_size
    if done % global_batch:
        raise RunError.at(checkpoint, None, f"saved mid-epoch after {done} samples with batch size {old_b} x "
                          f"{old_w} processes; resuming with {batch_size} x {world_size} needs a multiple of "
                          f"{global_batch}: resume with a batch size (x processes) that divides {done}, e.g. "
                          f"the original {old_b} x {old_w}")
    return done // global_batch


def first_difference(old: dict, new: dict) -> tuple[str, Any, Any] | None:
    """The first key (the stage first, then in sorted order) whose value differs."""
    _missing = "(not set)"
    keys = ["stage"] + sorted((set(old) | set(new)) - {"stage"})
    for key in keys:
        if key == "dataset annotations (hash)" and (key not in old or key not in new):
            continue  # known only once the dataset is loaded
        a, b = old.get(key, _missing), new.get(key, _missing)
        if a != b:
            return key, a, b
    return None


def check_identity(checkpoint: str | os.PathLike, saved: dict | None, current: dict) -> None:
    """Raise the one-line ``RunError`` when the checkpoint's run is not this run."""
    if not saved:
        return  # a checkpoint written before identities were stored
    diff = first_difference(saved, current)
    if diff is None:
        return
    key, old, new = diff
    what = "stage" if key == "stage" else (key if " " in key else f"--{key.replace('_', '-')}")
    if key == "stage":
        detail = f"checkpoint of stage {old!r}, this is stage {new!r}"
    else:
        detail = f"it holds another run ({what} {old!r} there, {new!r} now)"
    raise RunError.at(checkpoint, None, f"{detail}: use another --output-dir, or --overwrite to move the "
                      "old run aside (it is kept, never deleted)")


def check_folder_run(checkpoint: str | os.PathLike, args) -> None:
    """Before a training stage writes args.yaml: the folder's checkpoint must be this run's
    (options only; the Trainer then checks the stage name and the dataset's annotations). One
    ``RunError`` line naming the first difference."""
    ck = _lazy_checkpoint(checkpoint)
    saved = saved_identity(checkpoint)
    if not saved or not ck:
        return
    current = run_identity(args, saved["stage"])
    skip = {"stage", "dataset annotations (hash)"}
    if set(saved) - skip != set(current) - skip:
        raise RunError.at(checkpoint, None, f"checkpoint of stage {saved['stage']!r}, written by another stage "
                          "script: use another --output-dir, or --overwrite to move the old run aside (it is kept)")
    check_identity(checkpoint, saved, current)
    if getattr(args, "resume", True) and getattr(args, "batch_size", None):
        resume_position(checkpoint, ck, int(args.batch_size), int(os.environ.get("WORLD_SIZE", "1")))


# ----------------------------------------------------------------------------- test outputs
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _names(backup: Path) -> tuple[list[str], list[str]]:
    """(outputs moved into ``backup``, outputs that did not exist before the step)."""
    path = backup / ".names"
    if not path.is_file():
        return [], []
    lines = path.read_text(encoding="utf-8").split("\n") + ["", ""]
    return [n for n in lines[0].split("\t") if n], [n for n in lines[1].split("\t") if n]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def restore_outputs(directory: str | os.PathLike, backup: str | os.PathLike) -> None:
    """The failed step's partial outputs are removed (the project wrote them) and the moved ones put
    back from ``backup`` (``protect_outputs``); an output not yet moved when the step stopped is left
    alone. Silent: the step's error is its one line."""
    directory, backup = Path(directory), Path(backup)
    if not backup.exists():
        return
    present, absent = _names(backup)
    for name in present:
        if (backup / name).exists() or (backup / name).is_symlink():
            _remove(directory / name)
            os.rename(backup / name, directory / name)
    for name in absent:
        _remove(directory / name)
    shutil.rmtree(backup, ignore_errors=True)


def drop_outputs(backup: str | os.PathLike) -> None:
    """The previous outputs in ``backup`` are dropped: the step that replaced them has finished."""
    shutil.rmtree(backup, ignore_errors=True)


def recover_interrupted(directory: str | os.PathLike) -> None:
    """Put back the outputs a test step moved aside and never put back: its process is gone (killed),
    or it is this process (a step of it stopped before it could)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for backup in sorted(directory.glob(PREVIOUS_PREFIX + "*")):
        try:
            pid = int(backup.name[len(PREVIOUS_PREFIX):])
        except ValueError:
            continue
        if pid != os.getpid() and _pid_alive(pid):
            continue
        restore_outputs(directory, backup)
        print(f"notice: restored the outputs in {directory} that an interrupted test step (PID {pid}) "
              "had moved aside", file=sys.stderr, flush=True)


def protect_outputs(directory: str | os.PathLike, names: Iterable[str], ctx=None) -> Path | None:
    """Move this test step's previous outputs ``names`` (files or folders in ``directory``) aside,
    into ``<directory>/.previous.<PID>``, after locking the folder; returns that folder (rank 0;
    None on the other ranks). ``restore_outputs`` puts them back exactly as they were if the step
    fails, ``drop_outputs`` drops them once it has finished, ``recover_interrupted`` puts them back at
    the next start after a SIGKILL. Rank 0 moves them; every rank then waits for it (call it on
    every rank)."""
    from utils.engine.distributed import barrier

    directory = Path(directory)
    names = [str(n) for n in names]
    backup = None
    if ctx is None or ctx.is_main:
        lock_dir(directory)
        recover_interrupted(directory)
        remove_stale_temps(directory)
        backup = directory / f"{PREVIOUS_PREFIX}{os.getpid()}"
        backup.mkdir(parents=True)
        present = [n for n in names if (directory / n).exists() or (directory / n).is_symlink()]
        absent = [n for n in names if n not in present]
        (backup / ".names").write_text("\t".join(present) + "\n" + "\t".join(absent) + "\n", encoding="utf-8")
        for name in present:
            os.rename(directory / name, backup / name)
    if ctx is not None:
        barrier(ctx)
    return backup


def run_cli(main, get_args_parser, stage: str, argv: list[str] | None = None, *,
            args: argparse.Namespace | None = None):
    """``__main__`` of a stage script: parse (YAML + command line, ``stage`` names the config
    section) unless ``args`` (the namespace ``parse_early`` made) are given, and return ``main(args)``.
    Bad input (``DataError``: a config error, a missing upstream file, a malformed annotation, bad
    weights, also when a data loader worker met it) and faults of the run (``RunError``: output
    folder in use, another run's checkpoint, diverged loss, full disk) end with one ``error:`` line
    on stderr (rank 0 only under torchrun) and ``SystemExit(2)`` instead of a traceback; Ctrl-C with
    the line of :func:`interrupted` and ``SystemExit(130)``. ``main``'s frame
    (``utils.engine.stage.start_run``) has by then put a test step's previous outputs back."""
    try:
        if args is None:
            args = parse_args(get_args_parser(), argv, stage=stage)
        return main(args)
    except (DataError, FloatingPointError) as exc:  # FloatingPointError: a diverged model's output
        report_error(exc)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # Ctrl-C: where the run can resume, no traceback; 128 + SIGINT
        report_error(interrupted(args))
        raise SystemExit(130) from None
