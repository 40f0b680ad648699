"""The frame of a stage script's ``main``: :func:`start_run` (device, process group and seeds,
then the resolved options written by rank 0) and :func:`finish_run` (rank 0's last line, then the
process group left). Method-neutral: both methods' stage scripts use it."""
from __future__ import annotations

import os

from utils.engine.rundir import save_resolved_config
from utils.engine.distributed import DistContext, cleanup
from utils.engine.seeding import setup_run


def start_run(args, config_dir: str | os.PathLike | None = None) -> DistContext:
    """``utils.engine.seeding.setup_run(args)``, then rank 0 writes ``<config_dir>/args.yaml``
    (``utils.engine.rundir.save_resolved_config``; default ``args.output_dir``, the stage's own folder,
    which it claims). A test step passes a folder beside, not over, its train step's args.yaml."""
    ctx = setup_run(args)
    if ctx.is_main:
        save_resolved_config(args, args.output_dir if config_dir is None else config_dir)
    return ctx


def finish_run(ctx: DistContext, message: str | None = None) -> None:
    """Rank 0 prints ``message`` (the run's last line, e.g. what it wrote); then
    ``utils.engine.distributed.cleanup``."""
    if message and ctx.is_main:
        print(message, flush=True)
    cleanup(ctx)
