"""benchmarks/timing.py: warm-up calls, alternating order of the interleaved rounds, medians and
per-round ratios, on hand-made call logs and numbers (no timing is asserted)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from timing import interleaved, paired_ratios, spread  # noqa: E402


def test_interleaved_warms_up_then_alternates_the_order():
    calls = []
    times = interleaved({"stage": lambda: calls.append("s"), "bare": lambda: calls.append("b")},
                        repeats=3, warmup=2)
    # 2 warm-up rounds (not timed), then rounds s b | b s | s b
    assert "".join(calls) == "sb" * 2 + "sb" + "bs" + "sb"
    assert [len(times["stage"]), len(times["bare"])] == [3, 3]
    assert all(t >= 0 for t in times["stage"] + times["bare"])


def test_spread_and_paired_ratios():
    s = spread([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (3.0, 1.0, 5.0, 5)
    assert s["q1"] == pytest.approx(1.5) and s["q3"] == pytest.approx(4.5)  # exclusive quartiles
    assert spread([2.0])["median"] == 2.0
    # round 1: stage 2 s, bare 1 s -> stage runs at half the bare throughput
    assert paired_ratios([2.0, 1.0], [1.0, 1.0]) == [0.5, 1.0]
