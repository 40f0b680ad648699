"""Work on the run's device: batches moved to it, autocast in the chosen precision, DDP unwrapped."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from utils.engine.distributed import DistContext

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors in (nested) dicts / lists / tuples moved to ``device``; other values as they are."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [move_to_device(v, device) for v in batch]
        if isinstance(batch, list):
            return moved
        return type(batch)(*moved) if hasattr(batch, "_fields") else tuple(moved)
    return batch


def autocast(ctx: DistContext, amp: str = "off"):
    """``torch.autocast`` for the context's device: ``off``, ``bf16`` or ``fp16``."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"--amp must be one of {list(AMP_DTYPES)}, got {amp!r}")
    return torch.autocast(device_type=ctx.device.type, dtype=AMP_DTYPES[amp] or torch.bfloat16,
                          enabled=amp != "off")


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (or the model itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model
