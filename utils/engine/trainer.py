"""The one training loop of every stage (:class:`Trainer`): devices, mixed precision, torchrun,
exact resume from ``checkpoint.pth``, ``log.jsonl`` (and TensorBoard with ``--tensorboard``:
``utils.engine.tensorboard``); and :func:`build_optimizer`. A stage script
runs it inside its frame (``with utils.engine.stage.start_run(args) as ctx``), which holds the
output folder."""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from utils.engine.checkpoint import load_checkpoint, load_state_dict_checked, save_checkpoint
from utils.config import args_to_dict
from utils.engine.device import autocast, move_to_device
from utils.engine.distributed import DistContext, all_gather_object, all_reduce_sum, barrier
from utils.errors import DivergedError, RunError
from utils.io import atomic_write_text
from utils.data.samplers import ResumableSampler
from utils.engine.seeding import PerSampleSeeded, configure_determinism, seed_everything
from utils.engine import rundir
from utils.engine.tensorboard import open_writer


def build_optimizer(param_groups: Iterable, args) -> torch.optim.Optimizer:
    """``args.optimizer`` (sgd | adam | adamw, default sgd) with ``args.lr``, ``momentum``, ``weight_decay``.

    ``param_groups`` may carry their own ``lr`` (e.g. backbone lr x0.1).
    """
    name = str(getattr(args, "optimizer", "sgd")).lower()
    lr = float(args.lr)
    weight_decay = float(getattr(args, "weight_decay", 0.0))
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=float(getattr(args, "momentum", 0.9)),
                               weight_decay=weight_decay, nesterov=bool(getattr(args, "nesterov", False)))
    if name == "adam":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (sgd, adam, adamw)")


# ----------------------------------------------------------------------------- rng state
def _rng_state(ctx: DistContext) -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(ctx.device) if ctx.device.type == "cuda" else None,
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def _set_rng_state(state: dict, ctx: DistContext) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and ctx.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], ctx.device)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _batch_len(batch: Any) -> int:
    if isinstance(batch, dict):
        if isinstance(batch.get("image"), torch.Tensor):
            return int(batch["image"].shape[0])
        values = list(batch.values())
    elif isinstance(batch, (list, tuple)):
        values = list(batch)
    else:
        values = [batch]
    for v in values:
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return int(v.shape[0])
    return 0


class _Meter:
    """Sums of the loss and the loss_fn logs over a window (this rank's values)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.loss, self.steps, self.images, self.timed_images = 0.0, 0, 0, 0
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.start = time.perf_counter()

    def update(self, loss: float, logs: dict, images: int):
        self.loss += loss
        self.steps += 1
        self.images += images
        self.timed_images += images
        for k, v in logs.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1

    def state(self) -> dict:
        return {"loss": self.loss, "steps": self.steps, "images": self.images,
                "sums": dict(self.sums), "counts": dict(self.counts)}

    def load(self, state: dict):
        self.loss, self.steps, self.images = state["loss"], state["steps"], state["images"]
        self.sums, self.counts = dict(state["sums"]), dict(state["counts"])
        self.timed_images, self.start = 0, time.perf_counter()  # throughput since the resume

    def reduced(self, ctx: DistContext) -> dict:
        """Means over every rank's steps (every rank must call this at the same point)."""
        keys = sorted(self.sums)
        values = [self.loss, self.steps, self.timed_images] + [self.sums[k] for k in keys] + \
                 [self.counts[k] for k in keys]
        t = all_reduce_sum(torch.tensor(values, dtype=torch.float64), ctx)
        loss, steps, images = t[0].item(), t[1].item(), t[2].item()
        n = len(keys)
        out = {"loss": loss / max(steps, 1)}
        for i, k in enumerate(keys):
            out[k] = t[3 + i].item() / max(t[3 + n + i].item(), 1)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        out["images_per_s"] = images / elapsed
        return out


# ----------------------------------------------------------------------------- trainer
class Trainer:
    """Train ``model`` with ``optimizer`` for ``args.epochs`` epochs, resuming exactly.

    Uses from ``args``: output_dir, batch_size, epochs, workers, seed, amp, deterministic,
    resume, log_every, save_every_steps, max_steps_per_epoch, tensorboard (every ``log.jsonl``
    line also as TensorBoard scalars in ``<output_dir>/tensorboard/``).
    ``lr_lambda(global_step)`` multiplies every group's base lr (``LambdaLR`` stepped per
    optimizer step). ``fit(dataset, loss_fn)``: ``loss_fn(model, batch) -> (loss, {"name": float})``
    gets the batch on the device and the (possibly DDP-wrapped) model (``unwrap(model)`` reaches
    its attributes).

    Resume is exact at step granularity: the checkpoint holds model, optimizer, scaler and
    scheduler state, epoch, step in the epoch, global step, every rank's RNG states and the
    options as a plain dict. An epoch's sample order is a function of (seed, epoch) alone, so a
    resumed run starts at the first sample not yet trained on without loading the skipped
    images; augmentations draw from RNGs seeded per sample (``utils.engine.seeding.PerSampleSeeded``).
    Each checkpoint stores the run's identity (``utils.engine.rundir.run_identity``): a folder
    holding another run is refused with one ``RunError`` line instead of resumed.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, args, ctx: DistContext, *,
                 lr_lambda: Callable[[int], float] | None = None, stage_name: str = "",
                 find_unused_parameters: bool = False, drop_last: bool = False,
                 clip_grad_norm: float | None = None, shuffle: bool = True):
        self.args, self.ctx, self.stage_name = args, ctx, stage_name
        self.model = model.to(ctx.device)
        self.train_model: nn.Module = self.model
        if ctx.distributed:
            self.train_model = DistributedDataParallel(
                self.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                find_unused_parameters=find_unused_parameters)
        self.optimizer = optimizer
        self.amp = getattr(args, "amp", "off")
        autocast(ctx, self.amp)  # validates the name
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.amp == "fp16")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda) if lr_lambda else None
        self.output_dir = Path(args.output_dir)
        self.drop_last, self.clip_grad_norm, self.shuffle = drop_last, clip_grad_norm, shuffle
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.epoch_meter, self.window = _Meter(), _Meter()
        self.tensorboard = None  # opened by fit() on rank 0 with --tensorboard
        configure_determinism(bool(getattr(args, "deterministic", False)))

    # -- bookkeeping ------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / "checkpoint.pth"

    def steps_per_epoch(self, length: int) -> int:
        per_rank = math.ceil(length / self.ctx.world_size)
        b = int(self.args.batch_size)
        steps = per_rank // b if self.drop_last else math.ceil(per_rank / b)
        cap = int(getattr(self.args, "max_steps_per_epoch", 0) or 0)
        return min(steps, cap) if cap > 0 else steps

    def _log(self, record: dict) -> None:
        if not self.ctx.is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        if self.tensorboard is not None:
            self.tensorboard.add_record(record, int(record["global_step"]),
                                        "epoch" if record.get("event") == "epoch_end" else "train")

    def _truncate_log(self) -> None:
        """Drop log lines of steps after the checkpoint: they are trained (and logged) again."""
        log = self.output_dir / "log.jsonl"
        if not log.is_file():
            return
        kept = []
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the crash
            if int(record.get("global_step", 0)) <= self.global_step:
                kept.append(line)
        atomic_write_text(log, "".join(k + "\n" for k in kept))

    def _lr_fields(self) -> dict:
        lrs = getattr(self, "_step_lrs", None) or [g["lr"] for g in self.optimizer.param_groups]
        return {"lr": lrs[0]} if len(lrs) == 1 else {"lr": lrs[0], "lr_groups": lrs}

    def save(self) -> None:
        """Write ``checkpoint.pth`` (collective: every rank must call it)."""
        per_rank = all_gather_object({"rng": _rng_state(self.ctx), "epoch_meter": self.epoch_meter.state()},
                                     self.ctx)
        if not self.ctx.is_main:
            return
        save_checkpoint(self.checkpoint_path, {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": self.epoch, "step": self.step_in_epoch, "global_step": self.global_step,
            "world_size": self.ctx.world_size, "batch_size": int(self.args.batch_size),
            "per_rank": per_rank, "stage": self.stage_name, "args": args_to_dict(self.args),
            "identity": self.identity(),
        })

    def identity(self) -> dict:
        """This run's identity (utils.engine.rundir.run_identity), with the dataset once ``fit`` has it."""
        return rundir.run_identity(self.args, self.stage_name, getattr(self, "_dataset", None))

    def resume(self) -> bool:
        """Restore everything from ``checkpoint.pth`` when ``args.resume`` and the file exists.

        A checkpoint of another stage or of another run (utils.engine.rundir.check_identity) is refused
        with one line, also with ``--no-resume`` (which would overwrite it)."""
        path = self.checkpoint_path
        if not path.is_file():
            return False
        ck = load_checkpoint(path, map_location="cpu")
        if not isinstance(ck, dict) or "model" not in ck or "epoch" not in ck:
            raise RunError.at(path, None, "not a training checkpoint of this project (no model/epoch entries): "
                              "use another --output-dir, or --overwrite to move the folder's run aside")
        if ck.get("stage", "") != self.stage_name:
            raise RunError.at(path, None, f"checkpoint of stage {ck.get('stage')!r}, this is stage "
                              f"{self.stage_name!r}: use another --output-dir, or --overwrite to move the old "
                              "run aside (it is kept)")
        rundir.check_identity(path, ck.get("identity"), self.identity())
        if not getattr(self.args, "resume", True):
            return False
        step = rundir.resume_position(path, ck, int(self.args.batch_size), self.ctx.world_size)
        load_state_dict_checked(self.model, ck["model"], source=str(path))
        self.optimizer.load_state_dict(ck["optimizer"])
        if ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        if self.scheduler is not None and ck.get("scheduler") is not None:
            self.scheduler.load_state_dict(ck["scheduler"])
        self.epoch, self.global_step = int(ck["epoch"]), int(ck["global_step"])
        self.step_in_epoch = step
        per_rank = ck["per_rank"]
        if ck["world_size"] == self.ctx.world_size:
            _set_rng_state(per_rank[self.ctx.rank]["rng"], self.ctx)
            self.epoch_meter.load(per_rank[self.ctx.rank]["epoch_meter"])
        else:
            # other ranks' random streams cannot be mapped: restart them from a known seed
            seed_everything(int(self.args.seed) + self.global_step, self.ctx,
                            deterministic=bool(getattr(self.args, "deterministic", False)))
        if self.ctx.is_main:
            self._truncate_log()
            print(f"resumed {self.stage_name or 'training'} from {path}: epoch {self.epoch} "
                  f"step {self.step_in_epoch} (global step {self.global_step})", flush=True)
        return True

    # -- training ---------------------------------------------------------------------
    def _loader(self, dataset: Dataset, epoch: int, start_step: int, collate_fn) -> DataLoader:
        args, ctx = self.args, self.ctx
        b = int(args.batch_size)
        sampler = ResumableSampler(len(dataset), epoch=epoch, seed=int(args.seed), shuffle=self.shuffle,
                                   rank=ctx.rank, world_size=ctx.world_size, start=start_step * b)
        g = torch.Generator()
        g.manual_seed(int(args.seed) + epoch)  # workers' base seed; leaves the global RNG alone
        workers = int(getattr(args, "workers", 0))
        return DataLoader(PerSampleSeeded(dataset, int(args.seed)), batch_size=b, sampler=sampler,
                          num_workers=workers, collate_fn=collate_fn, pin_memory=ctx.device.type == "cuda",
                          drop_last=self.drop_last, generator=g, persistent_workers=False)

    def train_step(self, batch: Any, loss_fn) -> tuple[float, dict]:
        self._step_lrs = [g["lr"] for g in self.optimizer.param_groups]  # the lr this step uses
        with autocast(self.ctx, self.amp):
            loss, logs = loss_fn(self.train_model, batch)
        loss_value = float(loss.detach().float().item())
        if not math.isfinite(loss_value):
            lr = float(getattr(self.args, "lr", float("nan")))
            raise DivergedError.at(self.output_dir, None, f"{self.stage_name}: the loss is {loss_value} at epoch "
                                   f"{self.epoch} step {self.step_in_epoch} (global step {self.global_step}): "
                                   f"training diverged; the last checkpoint is kept: run again with a lower "
                                   f"--lr (now {lr:g})"
                                   + (f" or --amp off (now {self.amp})" if self.amp != "off" else "")
                                   + ", with --overwrite (this run is moved aside) or another --output-dir")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss_value, dict(logs or {})

    def fit(self, dataset: Dataset, loss_fn, *, collate_fn=None,
            on_epoch_end: Callable[[int, nn.Module], dict | None] | None = None) -> nn.Module:
        """Train; return the unwrapped model. ``on_epoch_end(epoch, model)`` runs on every rank
        after each epoch (e.g. evaluation); a dict it returns is added to the epoch's log line."""
        args, ctx = self.args, self.ctx
        self._dataset = dataset
        if ctx.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        resumed = self.resume()
        steps = self.steps_per_epoch(len(dataset))
        if steps <= 0:
            raise RunError.at(getattr(args, "data_root", None) or self.output_dir, None,
                              f"{self.stage_name}: no training step per epoch ({len(dataset)} samples, batch "
                              f"size {args.batch_size}, {ctx.world_size} processes): use a smaller --batch-size")
        log_every = int(getattr(args, "log_every", 0) or 0)
        save_every = int(getattr(args, "save_every_steps", 0) or 0)
        # a resumed run trains the steps after its checkpoint again: their events go, as their log lines
        self.tensorboard = open_writer(args, ctx, purge_step=self.global_step + 1 if resumed else None)
        try:
            self._epochs(dataset, loss_fn, collate_fn, on_epoch_end, steps, log_every, save_every)
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()
                self.tensorboard = None
        if ctx.is_main:
            save_checkpoint(self.output_dir / "model.pth", self.model.state_dict())
        barrier(ctx)
        return self.model

    def _epochs(self, dataset, loss_fn, collate_fn, on_epoch_end, steps: int, log_every: int, save_every: int):
        """``fit``'s epoch loop: train, log every ``log_every`` steps and at each epoch's end, checkpoint."""
        args, ctx = self.args, self.ctx
        for epoch in range(self.epoch, int(args.epochs)):
            self.epoch = epoch
            start = self.step_in_epoch
            self.train_model.train()
            self.window.reset()
            if start == 0:
                self.epoch_meter.reset()
            bar = tqdm(total=steps, initial=start, disable=not ctx.is_main, dynamic_ncols=True,
                       desc=f"{self.stage_name} epoch {epoch}".strip())
            if start < steps:
                for batch in self._loader(dataset, epoch, start, collate_fn):
                    batch = move_to_device(batch, ctx.device)
                    loss, logs = self.train_step(batch, loss_fn)
                    self.step_in_epoch += 1
                    self.global_step += 1
                    n = _batch_len(batch)
                    self.window.update(loss, logs, n)
                    self.epoch_meter.update(loss, logs, n)
                    bar.update(1)
                    if log_every and self.global_step % log_every == 0:
                        stats = self.window.reduced(ctx)
                        bar.set_postfix(loss=f"{stats['loss']:.4f}")
                        self._log({"stage": self.stage_name, "epoch": epoch, "step": self.step_in_epoch,
                                   "global_step": self.global_step, **self._lr_fields(), **stats})
                        self.window.reset()
                    if self.step_in_epoch >= steps:
                        break
                    if save_every and self.global_step % save_every == 0:
                        self.save()
            bar.close()
            stats = self.epoch_meter.reduced(ctx)
            extra = on_epoch_end(epoch, self.model) if on_epoch_end is not None else None
            self.train_model.train()
            self._log({"stage": self.stage_name, "event": "epoch_end", "epoch": epoch, "steps": steps,
                       "global_step": self.global_step, **self._lr_fields(), **stats,
                       **(extra if isinstance(extra, dict) else {})})
            self.epoch, self.step_in_epoch = epoch + 1, 0
            self.epoch_meter.reset()
            self.save()
