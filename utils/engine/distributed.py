"""One process or many under ``torchrun``, with the same code (nanoGPT / MAE style).

Distributed mode is detected from torchrun's environment variables (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``); without them the script runs as a single process and
no process group is ever created. Backend: NCCL for CUDA devices, gloo for CPU.

Single GPU::      python3 train.py ...
Several GPUs::    torchrun --nproc_per_node 4 train.py ...
CPU, 2 procs::    OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone --nproc_per_node 2 train.py --device cpu
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        """True on the process that writes logs, checkpoints and outputs (rank 0)."""
        return self.rank == 0


def resolve_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``."""
    name = str(device)
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            from utils.errors import DeviceError  # one error line from a stage script, not a traceback

            raise DeviceError("--device cuda was requested but CUDA is not available "
                              "(use --device cpu or --device auto)")
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


def init_distributed(device: str | torch.device = "auto") -> DistContext:
    """Return the process's context; initialise the process group when launched by torchrun."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistContext(device=resolve_device(device, 0))
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", rank=rank,
                                world_size=world_size, timeout=datetime.timedelta(minutes=30))
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev,
                       distributed=True)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over every rank, in place; returns it (unchanged in a single process)."""
    if not ctx.distributed:
        return tensor
    if tensor.device != ctx.device:
        # NCCL reduces only CUDA tensors, gloo only CPU ones: reduce on the context's device
        moved = tensor.to(ctx.device)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        tensor.copy_(moved)
        return tensor
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_object(obj: Any, ctx: DistContext) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not ctx.distributed:
        return [obj]
    gathered: list = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def merged_on_main(accumulator, ctx: DistContext):
    """``accumulator`` (anything with ``state()`` and ``merge(state)``, e.g. the evaluator of
    ``utils.evaluation.evaluator``) with every other rank's state merged in, on rank 0; None on the
    other ranks. Every rank calls it."""
    states = all_gather_object(accumulator.state(), ctx)
    if not ctx.is_main:
        return None
    for state in states[1:]:
        accumulator.merge(state)
    return accumulator


def barrier(ctx: DistContext) -> None:
    if not ctx.distributed:
        return
    if ctx.device.type == "cuda":
        dist.barrier(device_ids=[ctx.device.index])
    else:
        dist.barrier()


def cleanup(ctx: DistContext) -> None:
    """Destroy the process group (call once at the end of ``main``)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
