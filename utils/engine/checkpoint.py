"""Checkpoints that load safely and weights that load loudly: ``save_checkpoint`` (atomic; tensors
and Python builtins only, so ``torch.load(weights_only=True)`` reads every file it writes),
``load_checkpoint`` (``weights_only=True``), and ``load_state_dict_checked`` / ``load_stage_weights``,
the only ways weights go into a model (MAE's ``load_model`` checks: no silent ``strict=False``)."""
from __future__ import annotations

import argparse
import fnmatch
import os
import pickle
import sys
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn as nn

from utils.errors import DataError, MissingFileError
from utils.io import atomic_write
from utils.paths import missing_output

_BUILTINS = (str, int, float, bool, bytes, type(None))


def _plain(value: Any, where: str, path: os.PathLike | str) -> Any:
    """Check (and lightly convert) one value of a checkpoint dict."""
    if isinstance(value, torch.Tensor) or isinstance(value, _BUILTINS):
        return value
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (torch.dtype, torch.device, torch.Size)):
        return value  # allowed by torch's weights-only unpickler
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, (str, int, float, bool, type(None))):
                raise TypeError(f"save_checkpoint({path}): key {k!r} at {where} is a "
                                f"{type(k).__name__}; keys must be str/int")
            out[k] = _plain(v, f"{where}[{k!r}]", path)
        return out
    if isinstance(value, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]", path) for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise TypeError(f"save_checkpoint({path}): {where} is a {type(value).__module__}."
                    f"{type(value).__qualname__}; a checkpoint holds only tensors and builtins "
                    "(convert it to a dict, list, number or text) so that it loads with "
                    "torch.load(weights_only=True)")


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` (a dict of tensors / builtins, nested) to ``path`` atomically (temporary file
    + ``os.replace``, ``utils.io``); returns ``path``. An ``argparse.Namespace`` or a path in it becomes
    a plain value; any other object is refused (``TypeError``) before anything is written."""
    if not isinstance(state, dict):
        raise TypeError(f"save_checkpoint({path}): state must be a dict, got {type(state).__name__}")
    state = _plain(state, "state", path)
    path = Path(path)
    with atomic_write(path, "wb") as f:
        torch.save(state, f)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", *,
                    producer: str | None = None) -> Any:
    """Load a file written by ``save_checkpoint`` or a plain state dict (``weights_only=True``).

    ``producer`` names what writes the file (e.g. ``"spol/cam/train.py"``) for the error
    raised when it is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise missing_output(path, producer) if producer else MissingFileError.at(path, None, "not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = " ".join(str(exc).split())[:300]
        raise DataError.at(path, None, "refused to load: the file holds Python objects other than "
                           "tensors and builtins, and unpickling them could run code. Load only "
                           "files you trust; re-save the trusted file as a plain state dict. "
                           f"(torch.load weights_only=True said: {first})") from None
    except (RuntimeError, EOFError, OSError) as exc:
        first = " ".join(str(exc).split())[:200]
        raise DataError.at(path, None, f"not a readable PyTorch checkpoint (truncated or corrupt?): "
                           f"{first}") from None


def _shorten(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def unwrap_state_dict(state: dict) -> dict:
    """Return the weights of a full checkpoint (``{"model": ...}`` / ``{"state_dict": ...}``) or ``state``."""
    if any(isinstance(v, torch.Tensor) for v in state.values()):
        return state
    for key in ("model", "state_dict"):
        if isinstance(state.get(key), dict):
            return state[key]
    return state


def load_state_dict_checked(model: nn.Module, state_dict: dict, *, source: str,
                            allow_missing: Iterable[str] = (), prefix_strip: Iterable[str] = ("module.",),
                            to_float32: bool = True) -> list[str]:
    """Load ``state_dict`` into ``model``; return the missing keys (all allowed).

    ``source`` names where the weights come from (a path) for the error messages.
    ``allow_missing`` holds key names or glob patterns (``"fc.*"``) that may be absent.
    Raises ``DataError`` (a ``ValueError``) on unexpected keys, shape mismatches and
    missing keys that are not allowed, before the model is changed.
    BatchNorm ``num_batches_tracked`` counters absent from old files are filled by
    BatchNorm itself and never reported.
    """
    state_dict = unwrap_state_dict(dict(state_dict))
    prefixes = tuple(prefix_strip)
    cleaned: dict[str, torch.Tensor] = {}
    halves: dict[str, int] = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in prefixes:
                if prefix and key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        if not isinstance(value, torch.Tensor):
            raise DataError.at(source, None, f"entry '{key}' is a {type(value).__name__}, not a tensor")
        if to_float32 and value.dtype in (torch.float16, torch.bfloat16):
            kind = str(value.dtype).replace("torch.", "")
            halves[kind] = halves.get(kind, 0) + 1
            value = value.float()  # checkpoints saved under fp16 mixed precision load as float32
        cleaned[key] = value

    expected = model.state_dict()
    unexpected = sorted(k for k in cleaned if k not in expected)
    mismatched = sorted(f"{k} {list(cleaned[k].shape)} vs model {list(expected[k].shape)}"
                        for k in cleaned if k in expected and cleaned[k].shape != expected[k].shape)
    missing = [k for k in expected if k not in cleaned]
    patterns = tuple(allow_missing)
    not_allowed = [k for k in missing if not k.endswith("num_batches_tracked")
                   and not any(fnmatch.fnmatchcase(k, p) for p in patterns)]
    problems = []
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_shorten(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {_shorten(mismatched)}")
    if not_allowed:
        problems.append(f"missing keys ({len(not_allowed)}): {_shorten(not_allowed)}")
    if problems:
        raise DataError.at(source, None, f"weights do not fit {type(model).__name__}: "
                           + "; ".join(problems))
    model.load_state_dict(cleaned, strict=False)
    if halves and int(os.environ.get("RANK", "0")) == 0:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(halves.items()))
        print(f"notice: {source}: {kinds} tensors loaded as float32", file=sys.stderr, flush=True)
    return [k for k in missing if not k.endswith("num_batches_tracked")]


def load_stage_weights(model: nn.Module, path: str | os.PathLike, producer: str | None, *,
                       prefix: str = "") -> nn.Module:
    """Load the weights another stage wrote (its ``model.pth``, or a training ``checkpoint.pth``,
    or a released state dict) into ``model``, strictly (``load_state_dict_checked``); returns it.

    ``producer`` is the stage script that writes the file (e.g. ``"spol/cam/train.py"``): a missing
    file is one error line naming the file and the command to run (``utils.paths.missing_output``);
    None for a file no stage writes (a released state dict). Fp16 tensors load as float32.
    ``prefix``: only the keys under it, without it (e.g. ``"regressor."``: the regressor alone from
    the localizer stage's joint weights); a file holding no such key is taken as the part alone.
    """
    state = unwrap_state_dict(load_checkpoint(path, producer=producer))
    if prefix:
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    load_state_dict_checked(model, state, source=os.fspath(path))
    return model
