"""The one inference loop of every test step, benchmark and evaluation pass that runs a model.

    results = run_inference(model, dataset, step, ctx, batch_size=..., workers=..., amp=...,
                            consume=consume)
    everything = gather_lists(results, ctx)        # on every rank, rank order

``step(model, batch)`` runs on the device, in ``torch.inference_mode`` and ``autocast`` (``--amp``),
on a batch already moved there, and returns what the batch gives (tensors kept on the device: no
``.cpu()`` per image). ``consume(result)`` is the per-batch host work (copying the result to the
host, boxes by contours, writing maps or masks): it runs on a background thread, one batch at a time
in batch order, while the device works on the next batches; what it returns is collected in batch
order. Without ``consume`` the step results themselves are collected.

Image batches in uint8 (transforms built with ``normalize=False``) are converted to float32 and
ImageNet-normalised on the device, on the batch (``utils.data.transforms.normalize_images``, counted in
the step's time): bit for bit what the per-image transform gives, without its per-image Python on
the loader thread (which shares the GIL with the forward pass), and a 4x smaller host-to-device copy.

Sharding: ``utils.data.samplers.ShardSampler`` gives every sample to exactly one rank (no padding), so
``gather_lists`` of the per-rank lists counts every image exactly once.

Prefetching: with ``workers`` > 0 the DataLoader's worker processes load ahead (``pin_memory`` on
CUDA); with ``workers`` = 0 one background thread loads the next batch while the model runs. The
next batch's host-to-device copy is issued before the current batch's step (non-blocking from
pinned memory on CUDA). At most ``max_pending`` batches wait for the consumer, so memory stays a few
batches whatever the dataset size.

An exception of the loader, the step or the consumer stops the loop and is raised in the caller's
thread (after the batches already handed to the consumer are done, so no file is left half-written;
the writers of ``utils.io`` are atomic anyway).
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from utils.engine.device import autocast, move_to_device
from utils.engine.distributed import DistContext, all_gather_object
from utils.data.samplers import ShardSampler
from utils.data.transforms import normalize_images

_END = object()
_LAST_STATS: dict = {}


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


def _threaded(iterable, depth: int = 2) -> Iterator:
    """Iterate ``iterable`` on a daemon thread, ``depth`` items ahead (exceptions re-raised here)."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def fill():
        try:
            for item in iterable:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(_END)
        except BaseException as error:  # noqa: BLE001  (handed to the consuming thread)
            items.put(_Raised(error))

    thread = threading.Thread(target=fill, name="inference-loader", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()


def _ahead(batches: Iterator, device: torch.device) -> Iterator:
    """Each batch moved to ``device``, the next one's copy issued before this one is yielded."""
    iterator = iter(batches)
    try:
        nxt = move_to_device(next(iterator), device)
    except StopIteration:
        return
    for batch in iterator:
        current, nxt = nxt, move_to_device(batch, device)
        yield current
    yield nxt


def _normalized(batch):
    """``batch`` with its uint8 ``"image"`` normalised (:func:`utils.data.transforms.normalize_images`)."""
    if isinstance(batch, dict) and isinstance(batch.get("image"), torch.Tensor) and batch["image"].dtype == torch.uint8:
        return {**batch, "image": normalize_images(batch["image"])}
    return batch


def shard_loader(dataset: Dataset, ctx: DistContext, *, batch_size: int, workers: int = 0,
                 collate_fn=None) -> DataLoader:
    """This rank's shard of ``dataset`` in order, batched (pinned memory on CUDA)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), ctx.rank, ctx.world_size),
                      num_workers=workers, collate_fn=collate_fn, pin_memory=ctx.device.type == "cuda",
                      persistent_workers=False)


def run_inference(model: nn.Module, dataset: Dataset, step: Callable[[nn.Module, Any], Any], ctx: DistContext, *,
                  batch_size: int, workers: int = 0, amp: str = "off", collate_fn=None, desc: str = "inference",
                  consume: Callable[[Any], Any] | None = None, max_pending: int = 2) -> list:
    """Run ``step`` over this rank's shard of ``dataset``; return the results (or ``consume``'s) in order.

    See the module's docstring. ``model`` is put in eval mode for the loop and restored after.
    Where the time went is kept for :func:`last_stats`.
    """
    timer = {"load_wait_s": 0.0, "step_s": 0.0, "consume_s": 0.0, "consume_wait_s": 0.0}
    autocast(ctx, amp)  # validates the name before any work
    loader = shard_loader(dataset, ctx, batch_size=batch_size, workers=workers, collate_fn=collate_fn)
    batches = _threaded(loader) if workers == 0 else iter(loader)
    was_training = model.training
    model.eval()
    results: list = []
    pending: list[Future] = []
    pool = ThreadPoolExecutor(1, thread_name_prefix="inference-consumer") if consume is not None else None

    def consume_in_inference_mode(result):
        start = time.perf_counter()
        try:
            with torch.inference_mode():  # grad mode is per thread
                return consume(result)
        finally:
            timer["consume_s"] += time.perf_counter() - start

    def wait_oldest():
        start = time.perf_counter()
        results.append(pending.pop(0).result())
        timer["consume_wait_s"] += time.perf_counter() - start

    bar = tqdm(total=len(loader), disable=not ctx.is_main, dynamic_ncols=True, desc=desc)
    try:
        with torch.inference_mode():
            source = _ahead(batches, ctx.device)
            while True:
                start = time.perf_counter()
                batch = next(source, _END)
                timer["load_wait_s"] += time.perf_counter() - start
                if batch is _END:
                    break
                start = time.perf_counter()
                batch = _normalized(batch)
                with autocast(ctx, amp):
                    result = step(model, batch)
                timer["step_s"] += time.perf_counter() - start
                if pool is None:
                    results.append(result)
                else:
                    while len(pending) >= max_pending:
                        wait_oldest()
                    pending.append(pool.submit(consume_in_inference_mode, result))
                bar.update(1)
            while pending:
                wait_oldest()
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True)  # batches handed to the consumer are finished before an error goes up
        if hasattr(batches, "close"):
            batches.close()
        model.train(was_training)
        _LAST_STATS.clear()
        _LAST_STATS.update(timer, batches=bar.n)
    return results


def last_stats() -> dict:
    """Seconds of the latest :func:`run_inference` of this process (what the benchmarks print):
    ``load_wait_s`` (the loop waiting for a batch), ``step_s`` (the steps as seen from the host),
    ``consume_s`` (the consumer's own work, on its thread), ``consume_wait_s`` (the loop waiting for
    the consumer), and ``batches``."""
    return dict(_LAST_STATS)


def file_writers(threads: int = 4) -> ThreadPoolExecutor:
    """Threads for a consumer's per-image files (``with file_writers() as w: list(w.map(save, items))``):
    an atomic write waits on its fsync, not on the CPU, so a few run at once."""
    return ThreadPoolExecutor(max(1, threads), thread_name_prefix="inference-writer")


def gather_lists(items: list, ctx: DistContext) -> list:
    """Concatenate every rank's list (rank order); the list itself in a single process."""
    out: list = []
    for part in all_gather_object(items, ctx):
        out.extend(part)
    return out
