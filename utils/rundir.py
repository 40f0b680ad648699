"""Output folders that never mix two runs and never lose a file.

* ``claim_output_dir(dir)``: an exclusive lock on ``dir/.lock`` (``fcntl.flock``, released by the
  operating system when the process ends, even on SIGKILL); a second run into the same folder
  stops with one line naming the first one's PID. The temporary files an interrupted atomic
  write left behind (``.<name>.<8 random characters>.tmp``, ``utils.io``'s naming) are removed.
  With ``--overwrite`` an existing run is first moved aside to ``<dir>.old-<time>`` (never deleted).
* ``run_identity`` / ``check_identity``: the options that change a training run's result and its
  dataset (layout, root, a hash of the annotations as read) are stored in every checkpoint; a
  run resumes only when they match, else one line names the first difference and the ways out.
* ``protect_outputs(dir, names)``: a test step's previous outputs are moved into a hidden folder
  while it runs and put back exactly as they were when it fails (also after a SIGKILL, at the
  next start); they are dropped only when it has finished.
"""
from __future__ import annotations

import atexit
import hashlib
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from utils.config import renamed_keys
from utils.errors import RunError

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
                "grid_images"}

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
    """Take the exclusive lock of ``directory`` for this process (idempotent)."""
    directory = Path(directory)
    key = os.path.realpath(directory)
    if key in _held or fcntl is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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
    fd = _held.pop(os.path.realpath(directory), None)
    if fd is not None:
        os.close(fd)


def release_all() -> None:
    """Release every folder lock of this process (a run finished in-process)."""
    for key in list(_held):
        os.close(_held.pop(key))


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


def claim_output_dir(directory: str | os.PathLike, *, overwrite: bool = False) -> Path | None:
    """Lock ``directory`` for this run (rank 0 only), move an existing training run (a folder with
    ``RUN_FILES``) aside when ``overwrite``, remove stale temporary files. Returns where the old
    run went, if moved."""
    directory = Path(directory)
    if not _is_main():
        return None
    first = os.path.realpath(directory) not in _held
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


# ----------------------------------------------------------------------------- identity
def records_hash(records) -> str:
    """A hash of a dataset's annotations as read: image ids, labels, boxes, sizes, class count."""
    h = hashlib.blake2b(digest_size=12)
    h.update(str(getattr(records, "num_classes", "")).encode())
    for r in records:
        h.update(f"{r.image_id}\0{int(r.label)}\0{tuple(r.size)}\0".encode())
        boxes = getattr(r, "boxes", None)
        if boxes is not None:
            h.update(bytes(memoryview(boxes).cast("B")) if hasattr(boxes, "tobytes") else str(boxes).encode())
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
    return renamed_keys(ident) if isinstance(ident, dict) and "stage" in ident else None


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
    (options only; the Trainer then checks the stage name and the dataset's annotations)."""
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
_protected: list[tuple[Path, Path]] = []
_failed = {"value": False}


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


def _restore(directory: Path, backup: Path) -> None:
    """The failed step's partial outputs are removed (the project wrote them) and the moved
    ones put back; an output not yet moved when the step was killed is left alone."""
    present, absent = _names(backup)
    for name in present:
        if (backup / name).exists() or (backup / name).is_symlink():
            _remove(directory / name)
            os.rename(backup / name, directory / name)
    for name in absent:
        _remove(directory / name)
    shutil.rmtree(backup, ignore_errors=True)


def recover_interrupted(directory: str | os.PathLike) -> None:
    """Put back the outputs a killed test step had moved aside (its process is gone)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for backup in sorted(directory.glob(PREVIOUS_PREFIX + "*")):
        try:
            pid = int(backup.name[len(PREVIOUS_PREFIX):])
        except ValueError:
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue
        _restore(directory, backup)
        print(f"notice: restored the outputs in {directory} that an interrupted test step (PID {pid}) "
              "had moved aside", file=sys.stderr, flush=True)


def protect_outputs(directory: str | os.PathLike, names: Iterable[str], ctx=None) -> None:
    """Move this test step's previous outputs ``names`` (files or folders in ``directory``) aside.

    They come back exactly as they were if the step fails (``restore_protected``, called by
    ``utils.config.run_cli`` and at exit after an uncaught exception, or ``recover_interrupted``
    at the next start after a SIGKILL); ``commit_protected`` drops them once the step is done.
    Rank 0 moves them; every rank then waits for it (call it on every rank)."""
    from utils.distributed import barrier

    directory = Path(directory)
    names = [str(n) for n in names]
    if ctx is None or ctx.is_main:
        lock_dir(directory)
        recover_interrupted(directory)
        remove_stale_temps(directory)
        backup = directory / f"{PREVIOUS_PREFIX}{os.getpid()}"
        if backup.exists():  # an earlier step of this process in this folder has finished
            for entry in [e for e in _protected if e[1] == backup]:
                _protected.remove(entry)
            shutil.rmtree(backup)
        backup.mkdir(parents=True)
        present = [n for n in names if (directory / n).exists() or (directory / n).is_symlink()]
        absent = [n for n in names if n not in present]
        (backup / ".names").write_text("\t".join(present) + "\n" + "\t".join(absent) + "\n", encoding="utf-8")
        for name in present:
            os.rename(directory / name, backup / name)
        _protected.append((directory, backup))
    if ctx is not None:
        barrier(ctx)


def restore_protected() -> None:
    """Put every protected output of this process back (the step failed)."""
    while _protected:
        directory, backup = _protected.pop()
        if backup.exists():
            _restore(directory, backup)  # silently: the error line is the run's one line


def commit_protected() -> None:
    """Drop the previous outputs of every finished test step of this process."""
    while _protected:
        _, backup = _protected.pop()
        shutil.rmtree(backup, ignore_errors=True)


def _excepthook(kind, value, tb, _previous=sys.excepthook):
    _failed["value"] = True
    _previous(kind, value, tb)


sys.excepthook = _excepthook


@atexit.register
def _at_exit() -> None:
    if _failed["value"]:
        restore_protected()
    else:
        commit_protected()


# ----------------------------------------------------------------------------- stage hook
# What each test step writes in its --output-dir (utils.config.run_cli names the stage,
# utils.seeding.setup_run protects the outputs): a function of the resolved options.
def _seg_outputs(args) -> list[str]:
    from utils.protocol import expand

    return expand(args.protocol) + ["metrics.json", "metrics.txt", "test_args"]


TEST_OUTPUTS = {
    "cls_test": lambda args: ["predictions.csv", "cls_metrics.json", "test_args"],
    "cam_test": lambda args: ["pseudo_masks", "pseudo_masks.json", "test_args"],
    "seg_test": _seg_outputs,
    "localizer_test": lambda args: ["scoremaps", "boxes.csv", "boxes.json", "metrics.json", "metrics.txt",
                                    "evaluate.json", "args.yaml"],
    "regressor_test": lambda args: ["boxes.csv", "boxes.json", "metrics.json", "metrics.txt", "grid.png",
                                    "args.yaml"],
    "classifier_test": lambda args: ["predictions.csv", "metrics.json", "args.yaml"],
}
# The model options a test step reads from its training run (args.yaml, else checkpoint.pth) when
# they are not given: test step -> (training folder, weights option that bypasses it, option names,
# input geometry taken when not given). SPOL's test steps read the training run in their own folder.
_SLT_MODEL = ["backbone", "output_stride", "cam_feature", "extra_conv", "regressor_feature", "regressor_hidden",
              "regressor_final_relu", "regressor_pool", "regressor_grid", "share_backbone"]
_GEOMETRY = ("resize_size", "input_size")
TEST_INHERITS = {
    # cls: the test input is the whole image resized (no crop unless --input-size is given)
    "cls_test": (lambda a: a.output_dir, "checkpoint", ["backbone"], ("resize_size",)),
    "cam_test": (lambda a: a.output_dir, "checkpoint", ["backbone", "output_stride"], ("resize_size",)),
    "seg_test": (lambda a: a.output_dir, "checkpoint", ["backbone", "output_stride"], _GEOMETRY),
    # K (--top-k, resolved from --top-k-ratio when that was given) is taken when not given, not refused
    "localizer_test": (lambda a: a.localizer_dir, "weights", _SLT_MODEL, _GEOMETRY + ("top_k",)),
    "classifier_test": (lambda a: a.classifier_dir, "checkpoint", ["backbone"], _GEOMETRY),
    "regressor_test": (lambda a: getattr(a, f"{a.regressor_source}_dir", None), "weights", _SLT_MODEL, _GEOMETRY),
}
current_stage = {"name": None}


def training_options(folder: str | os.PathLike) -> tuple[Path, dict] | None:
    """(file, options) of the training run in ``folder``: its args.yaml, else its checkpoint's args."""
    import yaml

    folder = Path(folder)
    path = folder / "args.yaml"
    if path.is_file():
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            data = None
        if isinstance(data, dict):
            return path, renamed_keys(data)  # an earlier run's args.yaml may use the old names
    path = folder / "checkpoint.pth"
    if path.is_file():
        import torch

        try:
            ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            return None
        if isinstance(ck, dict) and isinstance(ck.get("args"), dict):
            return path, renamed_keys(ck["args"])
    return None


def inherit_training_options(args, folder, names: Iterable[str], explicit: set[str] | None,
                             soft: Iterable[str] = ()) -> list[str]:
    """Options in ``names`` left at their defaults take the training run's values (one notice
    line); one given with another value than the training run's is a one-line ``RunError``.
    Options in ``soft`` (e.g. the input geometry) are taken when not given, never refused."""
    soft = set(soft)
    names = list(names) + sorted(soft)
    found = training_options(folder)
    if found is None:
        return []
    path, trained = found
    changed = []
    for name in names:
        if name not in trained or not hasattr(args, name):
            continue
        mine, theirs = getattr(args, name), trained[name]
        if mine == theirs:
            continue
        flag = "--" + name.replace("_", "-")
        if explicit is not None and name in explicit:
            if name in soft:
                continue
            raise RunError.at(path, None, f"the training run used {flag} {theirs}, this test step was given "
                              f"{flag} {mine}: drop {flag} to use the training run's, or point to the "
                              "training folder of that model")
        setattr(args, name, theirs)
        changed.append(f"{flag} {theirs}")
    if changed and _is_main():
        print(f"notice: {', '.join(changed)} read from {path} (the training run)", file=sys.stderr, flush=True)
    return changed


def protect_stage_outputs(args, ctx) -> None:
    """Called by ``utils.seeding.setup_run`` for the test step ``run_cli`` runs: the model options
    not given come from the training run (``TEST_INHERITS``, unless other weights are given), and
    the step's previous outputs are protected (``TEST_OUTPUTS``)."""
    inherits = TEST_INHERITS.get(current_stage["name"] or "")
    if inherits is not None:
        from utils.config import explicit_options

        folder_of, weights_option, option_names, soft = inherits
        if not getattr(args, weights_option, None) and folder_of(args):
            inherit_training_options(args, folder_of(args), option_names, explicit_options(args), soft)
    names = TEST_OUTPUTS.get(current_stage["name"] or "")
    if names is not None and getattr(args, "output_dir", None):
        protect_outputs(args.output_dir, names(args), ctx)
