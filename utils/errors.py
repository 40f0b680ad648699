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
