"""Timing shared by the benchmarks: warm-up, then the variants interleaved and repeated.

On a shared machine the load moves between two measurements taken one after the other, so a
stage timed minutes before its bare forward pass can come out faster than the bare pass it
contains. Here every round times each variant once, back to back, in an order that alternates
from round to round (A B, B A, A B, ...); a ratio is taken within each round (the two runs saw
about the same load) and the median over the rounds is reported with its spread.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(variants: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 1,
                device: torch.device = torch.device("cpu")) -> dict[str, list[float]]:
    """Seconds of each call of each variant: ``warmup`` untimed calls of each, then ``repeats``
    rounds timing every variant once, the order reversed every other round."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            _sync(device)
            start = time.perf_counter()
            variants[name]()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def spread(values: list[float]) -> dict:
    """Median, min, max and the quartiles (``statistics.quantiles``, exclusive) of ``values``."""
    values = sorted(values)
    q1, _, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
    return {"median": statistics.median(values), "min": values[0], "max": values[-1], "q1": q1, "q3": q3,
            "n": len(values)}


def paired_ratios(stage_s: list[float], bare_s: list[float]) -> list[float]:
    """Throughput ratio of each round: stage images/s over bare images/s = bare s / stage s."""
    return [b / s for s, b in zip(stage_s, bare_s)]
