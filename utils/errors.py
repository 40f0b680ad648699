"""Errors raised on bad input (dataset files, annotations, stage hand-off files).

Every message is one line naming the file and, where there is one, the 1-based line:
``"<path>:<line>: <what is wrong>"`` (or ``"<path>: <what is wrong>"``).
"""
from __future__ import annotations

import os


class DataError(ValueError):
    """Bad or missing input data. A ``ValueError`` so generic handlers still catch it."""

    @classmethod
    def at(cls, path: str | os.PathLike, line: int | str | None = None, msg: str = "") -> "DataError":
        """Build the error for ``path`` (and 1-based ``line`` when given): ``"<path>:<line>: <msg>"``."""
        if isinstance(line, str) and not msg:  # DataError.at(path, "what is wrong")
            line, msg = None, line
        where = os.fspath(path)
        if line is not None:
            where = f"{where}:{int(line)}"
        # keep the message on one line whatever the caller passed
        text = " ".join(str(msg).split())
        return cls(f"{where}: {text}")


class MissingFileError(DataError, FileNotFoundError):
    """A file another stage (or a download) should have provided is not there."""


class RunError(DataError):
    """A fault of the run rather than of its input files (output folder in use or holding another
    run, a checkpoint that cannot be resumed, a diverged loss, a full disk). Stage scripts end with
    its one-line message and exit status 2, like for a ``DataError``."""


class NoSpaceError(RunError, OSError):
    """The disk (or quota) filled up while an output file was written."""


class DivergedError(RunError, FloatingPointError):
    """The training loss became NaN or infinite."""


class DeviceError(RunError, RuntimeError):
    """The requested device is not there (e.g. ``--device cuda`` without CUDA)."""


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line.

    An exception re-raised by a ``DataLoader`` worker carries the worker's whole traceback
    ("Caught DataError in DataLoader worker process 0. Original Traceback ..."); its own
    message is the traceback's last line, after the exception's class name.
    """
    text = str(exc)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        name, sep, message = last.partition(": ")
        if sep and name.replace(".", "").replace("_", "").isalnum():
            text = message
        else:
            text = last
    return " ".join(text.split())
