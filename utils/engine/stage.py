"""The frame of every stage script's ``main``: ``with start_run(args, inherit=..., outputs=...) as ctx``
(the checks, a test step's options from its training run, torchrun and seeds, the output folder held
and a test step's previous outputs kept until it ends), ``save_args`` (the resolved options) and
``inherit_training_options``. The command line, the demo and the tests all enter through ``main``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterable

from utils.config import explicit_options, is_training, write_config
from utils.engine import rundir
from utils.engine.distributed import DistContext, barrier, cleanup, init_distributed
from utils.engine.seeding import seed_everything
from utils.errors import RunError
from utils.options import Inherit
from utils.paths import TEST_ARGS, TRAIN_ARGS
from utils.ranges import check_options


def training_options(folder) -> tuple[Path, dict] | None:
    """``(file, options)`` of the training run in ``folder``: its ``args.yaml``, else the options its
    ``checkpoint.pth`` stores; None when it has neither (or neither reads as a mapping)."""
    import yaml

    folder = Path(folder)
    path = folder / TRAIN_ARGS
    if path.is_file():
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            data = None
        if isinstance(data, dict):
            return path, data
    path = folder / "checkpoint.pth"
    if path.is_file():
        import torch

        try:
            ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # unreadable: the step's own loading reports it with the file's name
            return None
        if isinstance(ck, dict) and isinstance(ck.get("args"), dict):
            return path, ck["args"]
    return None


def inherit_training_options(args, spec: Inherit) -> list[str]:
    """Apply ``spec`` to ``args``: each of ``spec.options`` and ``spec.soft`` not given (on the command
    line or in ``--config``) takes the training run's value; one of ``spec.options`` given with another
    value is a one-line ``RunError`` naming both. Nothing happens when ``spec.unless`` names an option
    that is given, or when the folder holds no training run. Returns the options taken
    (``["--backbone resnet18", ...]``), also said in one notice line on rank 0."""
    if spec.unless and getattr(args, spec.unless, None):
        return []
    folder = spec.folder_of(args)
    found = training_options(folder) if folder else None
    if found is None:
        return []
    path, trained = found
    explicit = explicit_options(args)
    changed = []
    for name in (*spec.options, *spec.soft):
        if name not in trained or not hasattr(args, name):
            continue
        mine, theirs = getattr(args, name), trained[name]
        if mine == theirs:
            continue
        flag = "--" + name.replace("_", "-")
        if explicit is not None and name in explicit:
            if name in spec.soft:
                continue
            raise RunError.at(path, None, f"the training run used {flag} {theirs}, this test step was given "
                              f"{flag} {mine}: drop {flag} to use the training run's, or point to the "
                              "training folder of that model")
        setattr(args, name, theirs)
        changed.append(f"{flag} {theirs}")
    if changed and int(os.environ.get("RANK", "0")) == 0:
        print(f"notice: {', '.join(changed)} read from {path} (the training run)", file=sys.stderr, flush=True)
    return changed


class StageRun:
    """What :func:`start_run` returns: a context manager whose ``with`` gives the run's
    ``DistContext``."""

    def __init__(self, args, inherit: Inherit | Iterable[Inherit], outputs: Iterable[str] | None):
        self.args = args
        self.training = is_training(args)
        if self.training == (outputs is not None):
            raise ValueError("start_run: a test step names its outputs (outputs=...), a training step does not "
                             "(its whole folder is its own)")
        self.inherit = (inherit,) if isinstance(inherit, Inherit) else tuple(inherit)
        self.outputs = None if outputs is None else (*outputs, TEST_ARGS)
        self.ctx: DistContext | None = None
        self.backup: Path | None = None

    def __enter__(self) -> DistContext:
        args = self.args
        rundir.check_output_dir(args)
        for spec in self.inherit:
            inherit_training_options(args, spec)
        check_options(args)  # every option holds its final value: before anything is moved or written
        self.ctx = init_distributed(getattr(args, "device", "auto"))
        seed_everything(getattr(args, "seed", 0), self.ctx, deterministic=getattr(args, "deterministic", False))
        try:
            if self.training:
                if self.ctx.is_main:
                    rundir.claim_output_dir(args.output_dir, overwrite=bool(getattr(args, "overwrite", False)))
                barrier(self.ctx)  # rank 0 holds the folder (and moved an old run aside with --overwrite)
            else:
                self.backup = rundir.protect_outputs(args.output_dir, self.outputs, self.ctx)
        except BaseException:
            self._leave(failed=True)
            raise
        return self.ctx

    def __exit__(self, kind, value, traceback) -> bool:
        self._leave(failed=kind is not None)
        if kind is None:
            cleanup(self.ctx)  # after a failure the process ends (or the caller goes on) without it
        return False

    def _leave(self, *, failed: bool) -> None:
        if self.backup is not None:
            if failed:
                rundir.restore_outputs(self.args.output_dir, self.backup)
            else:
                rundir.drop_outputs(self.backup)
            self.backup = None
        rundir.unlock_dir(self.args.output_dir)


def start_run(args, *, inherit: Inherit | Iterable[Inherit] = (), outputs: Iterable[str] | None = None) -> StageRun:
    """The frame of a stage script's ``main``; ``with start_run(...) as ctx`` gives the ``DistContext``.

    Entering, in this order: ``--output-dir`` can be written and is no data root
    (``utils.engine.rundir.check_output_dir``); the options of ``inherit`` (``utils.options.Inherit``, the
    test step's declaration beside its parser) come from the training run; every option's cross
    check (``utils.ranges.check_options``); the process group (torchrun) and the seeds
    (``seed + rank``). Then a training step (``args`` with ``utils.config.TRAIN_ONLY``) takes its
    whole folder (``claim_output_dir``: lock, ``--overwrite``, a folder of files no run of this
    project wrote refused); a test step moves its previous ``outputs`` (names in ``--output-dir``; its
    ``test_args.yaml`` is added) aside (``protect_outputs``). Each fault is one ``DataError`` /
    ``RunError`` line before anything is written.

    Leaving: the folder is unlocked; a test step's previous outputs are dropped when the block ends
    normally, put back as they were when it raises (any exception, Ctrl-C included); the process
    group is left after a normal end. ``ValueError`` when a test step gives no ``outputs`` or a
    training step gives some.
    """
    return StageRun(args, inherit, outputs)


def save_args(args, ctx: DistContext) -> Path | None:
    """Rank 0 writes every option of ``args`` to ``<output_dir>/args.yaml`` (a training step) or
    ``<output_dir>/test_args.yaml`` (a test step; ``utils.paths``); call it once the options are final.
    A training step's folder that holds a checkpoint must hold this run's (same options,
    ``utils.engine.rundir.check_folder_run``), else one ``RunError`` line and nothing is written.
    Returns the file (None on the other ranks)."""
    if not ctx.is_main:
        return None
    folder = Path(args.output_dir)
    if not is_training(args):
        return write_config(args, folder / TEST_ARGS)
    checkpoint = folder / "checkpoint.pth"
    if checkpoint.is_file():
        rundir.check_folder_run(checkpoint, args)
    return write_config(args, folder / TRAIN_ARGS)
