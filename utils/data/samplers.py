"""Sample orders: a training epoch's resumable order and the test steps' shards.

``epoch_order`` is ``DistributedSampler``'s order (also in a single process), so a resumed run
rebuilds an epoch's order from (seed, epoch) alone and starts at the first sample not yet trained
on (``ResumableSampler``). ``ShardSampler`` gives every test sample to exactly one rank.
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import Sampler


def epoch_order(length: int, *, epoch: int, seed: int, shuffle: bool = True, rank: int = 0,
                world_size: int = 1) -> list[int]:
    """This rank's sample order for ``epoch``: exactly ``DistributedSampler(drop_last=False)``'s.

    With ``world_size`` 1 it is ``RandomSampler``'s order for a generator seeded with
    ``seed + epoch``. For any world size the first ``k * world_size`` positions over all
    ranks are the first ``k * world_size`` samples of the same permutation, so a global
    batch holds the same samples on one process and on many.
    """
    if shuffle:
        g = torch.Generator()
        g.manual_seed(seed + epoch)
        order = torch.randperm(length, generator=g).tolist()
    else:
        order = list(range(length))
    if world_size > 1:
        total = math.ceil(length / world_size) * world_size
        pad = total - length
        if pad:  # DistributedSampler pads by repeating the head of the order
            order += (order * math.ceil(pad / len(order)))[:pad]
        order = order[rank:total:world_size]
    return order


class ResumableSampler(Sampler):
    """Yields ``(epoch, index)`` for this rank's order of ``epoch``, from position ``start`` on.

    Skipped positions are never yielded, so their images are never loaded.
    """

    def __init__(self, length: int, *, epoch: int, seed: int, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, start: int = 0):
        self.epoch = epoch
        self.order = epoch_order(length, epoch=epoch, seed=seed, shuffle=shuffle, rank=rank,
                                 world_size=world_size)[start:]

    def __iter__(self):
        epoch = self.epoch
        return ((epoch, i) for i in self.order)

    def __len__(self) -> int:
        return len(self.order)


class ShardSampler(Sampler):
    """Indices ``rank, rank + world_size, ...``: every sample on exactly one rank, no padding."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
