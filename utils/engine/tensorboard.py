"""Optional TensorBoard logging (``--tensorboard``, offered by every training stage and test step, as
in TS-CAM, SCM, C2AM and the SPOL authors' scripts): rank 0 writes into ``<output-dir>/tensorboard/``
through ``torch.utils.tensorboard.SummaryWriter``.

- A training run (``utils.engine.trainer.Trainer``): every line it appends to ``log.jsonl`` also goes
  to TensorBoard, its numbers as scalars at the line's ``global_step``: ``train/<name>`` for the
  lines of ``--log-every`` steps, ``epoch/<name>`` for an epoch's end (``lr_groups`` as
  ``lr_groups/<i>``). A resumed run purges the events after its checkpoint's step, as it cuts
  ``log.jsonl`` there.
- A test step (:func:`log_test_step`): the numbers of its ``metrics.json`` as ``test/<name>``
  scalars (a nested result, e.g. a protocol of ``spol/seg/test.py``, as ``test/<protocol>/<name>``)
  and the stage picture it writes (``grid.png``) as an image, at step 0, when it ends.

TensorBoard is not a dependency (``pip install tensorboard``, or ``pip install ".[tensorboard]"``).
Without it ``--tensorboard`` is one ``error:`` line before any work (``utils.ranges.check_options``,
which looks for the package without importing it), never a traceback.
"""
from __future__ import annotations

import math
from pathlib import Path

from utils.ranges import TENSORBOARD_MISSING, tensorboard_missing

FOLDER = "tensorboard"
BOOKKEEPING = ("stage", "event", "epoch", "step", "steps", "global_step")   # log.jsonl keys that are no measurement


def _summary_writer():
    """``torch.utils.tensorboard.SummaryWriter``; a ``DataError`` line when it cannot be imported."""
    from utils.errors import DataError

    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # not installed, or an install torch cannot use
        raise DataError(TENSORBOARD_MISSING if tensorboard_missing() else f"--tensorboard: {' '.join(str(exc).split())}") from None
    return SummaryWriter


def scalars(record: dict, prefix: str) -> dict[str, float]:
    """``{"<prefix>/<name>": value}`` of the finite numbers of ``record`` (a ``log.jsonl`` line or a
    results dict): bookkeeping keys and booleans left out, a list of numbers as ``<name>/<i>``, a
    nested results dict as ``<prefix>/<key>/<name>``; curves (lists of lists) and text left out."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in BOOKKEEPING or isinstance(value, bool):
            continue
        tag = f"{prefix}/{key}"
        if isinstance(value, (int, float)):
            if math.isfinite(value):
                out[tag] = float(value)
        elif isinstance(value, dict):
            out.update(scalars(value, tag))
        elif isinstance(value, (list, tuple)) and value and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) and len(value) <= 16:
            out.update({f"{tag}/{i}": float(v) for i, v in enumerate(value) if math.isfinite(v)})
    return out


class TensorBoard:
    """One ``SummaryWriter`` on ``<folder>``; ``purge_step``: events from that step on, left by an
    earlier process of the same run, are dropped (a resumed run trains those steps again)."""

    def __init__(self, folder, *, purge_step: int | None = None):
        self.folder = Path(folder)
        self.writer = _summary_writer()(log_dir=str(self.folder), purge_step=purge_step)

    def add_record(self, record: dict, step: int, prefix: str) -> None:
        for tag, value in scalars(record, prefix).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def add_picture(self, tag: str, path, step: int = 0) -> None:
        """The PNG at ``path`` (a stage picture) as an RGB image; nothing when it was not written."""
        import cv2

        image = cv2.imread(str(path), cv2.IMREAD_COLOR) if Path(path).is_file() else None
        if image is not None:
            self.writer.add_image(tag, image[:, :, ::-1].copy(), step, dataformats="HWC")
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_writer(args, ctx, *, purge_step: int | None = None) -> TensorBoard | None:
    """The run's writer on rank 0 when ``args.tensorboard``, else None."""
    if not getattr(args, "tensorboard", False) or not ctx.is_main:
        return None
    return TensorBoard(Path(args.output_dir) / FOLDER, purge_step=purge_step)


def log_test_step(args, ctx, results: dict | None = None, pictures: dict | None = None) -> None:
    """A test step's numbers (``test/...`` scalars) and pictures (``{tag: png path}``) at its end."""
    writer = open_writer(args, ctx)
    if writer is None:
        return
    try:
        writer.add_record(results or {}, 0, "test")
        for tag, path in (pictures or {}).items():
            writer.add_picture(tag, path)
    finally:
        writer.close()
