"""Atomic output writing: a temporary file in the target's folder, flushed, fsynced, then
``os.replace``d over the target, so a crash or an exception never leaves a truncated file (an
existing target stays as it was; a full disk is one ``NoSpaceError`` line naming the file; parent
folders are created). A test step's ``metrics.json`` and ``metrics.txt`` are written by
``utils.evaluation.results.write_metrics``."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np

from utils.errors import NoSpaceError

_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Yield a file object opened with ``mode`` ("wb" or "w"); on clean exit it replaces ``path``."""
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_write supports modes 'w', 'wt' and 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        kwargs = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; give the output the usual permissions (umask applied)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        no_space = (isinstance(exc, OSError) and exc.errno in _NO_SPACE) or (
            isinstance(exc, RuntimeError) and "No space left" in str(exc))  # torch.save's C++ writer
        if no_space and not isinstance(exc, NoSpaceError):
            raise NoSpaceError.at(path, None, f"no space left on the device while writing it; "
                                  "the previous version, if any, is unchanged and no partial file was left: "
                                  "free some space and run again") from None
        raise


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save ``array`` as ``.npy`` at ``path`` (exact path: no extension is appended)."""
    with atomic_write(path, "wb") as f:
        np.save(f, np.asarray(array), allow_pickle=False)


def atomic_save_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save a uint8 HxW (grey) or HxWx3 (RGB order) array as PNG; RGB is converted to BGR for cv2."""
    import cv2

    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"atomic_save_png expects uint8, got {array.dtype} for {path}")
    if array.ndim == 3 and array.shape[2] == 3:
        array = np.ascontiguousarray(array[:, :, ::-1])
    elif array.ndim != 2:
        raise ValueError(f"atomic_save_png expects HxW or HxWx3, got shape {array.shape} for {path}")
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise ValueError(f"cv2.imencode failed to encode a PNG for {path}")
    with atomic_write(path, "wb") as f:
        f.write(buf.tobytes())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path``."""
    with atomic_write(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON (indent=2, keys in insertion order) followed by a newline."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
