"""Seeds and determinism: ``seed_everything`` (Python, NumPy and torch at ``seed + rank``, the
determinism flags) and ``PerSampleSeeded`` (each training sample's augmentation seeded from (seed,
epoch, index), so a sample is drawn alike whatever the worker count or the resume point)."""
from __future__ import annotations

import hashlib
import os
import random

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.engine.distributed import DistContext


def configure_determinism(deterministic: bool) -> None:
    """Deterministic algorithms and cuDNN flags (``--deterministic``); else cuDNN autotuning."""
    if deterministic:
        # cuBLAS needs this before its first call to be deterministic
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True


def seed_everything(seed: int, ctx: DistContext | None = None, *, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch with ``seed + rank``; set the determinism flags."""
    rank = ctx.rank if ctx is not None else 0
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)
    configure_determinism(deterministic)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation in one epoch."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class PerSampleSeeded(Dataset):
    """Wraps a dataset: item ``(epoch, index)`` is ``dataset[index]`` drawn with seeded RNGs.

    torch's CPU generator, ``random`` and ``numpy.random`` are seeded from
    ``sample_seed(seed, epoch, index)`` for the call and restored afterwards, so the
    caller's random streams (dropout when ``workers`` is 0) are not disturbed.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        s = sample_seed(self.seed, epoch, index)
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(s)
                random.seed(s)
                np.random.seed(s % 2**32)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
