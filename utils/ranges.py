"""The valid range of every option, declared once, importable without torch.

:class:`Range` values (:data:`positive_int`, :data:`fraction`, :data:`probability`, ...) are argparse
``type=`` callables, so that a value out of range is refused by argparse itself, on the command line
and in a ``--config`` file (``utils.config`` converts YAML values with the same ``type``), before any
work. :func:`check_options` checks what one option cannot say alone (a crop larger than the resize,
LOW > HIGH pairs, a split the layout does not have).
"""
from __future__ import annotations

import argparse
import math

# the splits a layout has (utils.data.layouts reads them; the metadata layout has whatever its
# folder holds), named here so that --split is checked before torch loads
LAYOUT_SPLITS = {"cub": ("train", "test"), "ilsvrc": ("train", "val")}


class Range:
    """An argparse ``type=``: an ``int`` or ``float`` within ``[low, high]`` (an end left open with
    ``low_open`` / ``high_open``; None = unbounded). Refuses NaN and infinities."""

    def __init__(self, kind: type, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False):
        self.kind, self.low, self.high, self.low_open, self.high_open = kind, low, high, low_open, high_open
        self.__name__ = kind.__name__  # argparse names the type in its messages

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            return (f"{what} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{what} {'<' if self.high_open else '<='} {self.high:g}"
        return what

    def contains(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def __call__(self, text):
        try:
            value = self.kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}") from None
        if (self.kind is float and not math.isfinite(value)) or not self.contains(value):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}")
        return value

    def __repr__(self) -> str:
        return f"Range({self.describe()})"


positive_int = Range(int, 1)                                        # counts: epochs, batch size, sizes, K
non_negative_int = Range(int, 0)                                    # workers, intervals where 0 = off
positive_float = Range(float, 0, low_open=True)                     # learning rates, strides, scales
non_negative_float = Range(float, 0)                                # weights, multipliers, decay
fraction = Range(float, 0, 1, low_open=True)                        # (0, 1]: threshold-sweep intervals
probability = Range(float, 0, 1)                                    # [0, 1]: thresholds, alpha, probabilities
open_fraction = Range(float, 0, 1, low_open=True, high_open=True)   # (0, 1): IoU thresholds
momentum = Range(float, 0, 1, high_open=True)                       # [0, 1): SGD momentum


TENSORBOARD_MISSING = ("--tensorboard: the tensorboard package is not installed: pip install tensorboard "
                       "(or pip install \".[tensorboard]\"), or leave out --tensorboard")


def tensorboard_missing() -> bool:
    """True when the ``tensorboard`` package cannot be found (looked for without importing it)."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is None


def _fail(message: str):
    from utils.errors import DataError

    raise DataError(message)


def check_options(args, only: set[str] | None = None) -> None:
    """The ranges one option cannot check alone, on whatever ``args`` holds (an option missing or
    None is not checked yet): ``--input-size`` <= ``--resize-size`` (the crop fits in the resized
    image), ``LOW <= HIGH`` pairs, a ``--split`` the layout has, and ``--tensorboard`` only with the
    tensorboard package installed. One ``DataError`` line naming the options. ``only``: check just
    the options named there (the ones given, at parse time: a default may still be replaced, e.g. by
    a test step's training run)."""
    get = lambda name: getattr(args, name, None) if only is None or name in only else None  # noqa: E731
    if get("tensorboard") and tensorboard_missing():
        _fail(TENSORBOARD_MISSING)
    crop, resize = get("input_size"), get("resize_size")
    if crop is not None and resize is not None and crop > resize:
        _fail(f"--input-size {crop} is larger than --resize-size {resize}: the crop is cut from the resized "
              "image, so it must fit in it")
    for low, high, what in (("vst_scale_min", "vst_scale_max", "scale range"),):
        if get(low) is not None and get(high) is not None and get(low) > get(high):
            _fail(f"--{low.replace('_', '-')} {get(low)} is larger than --{high.replace('_', '-')} {get(high)}")
    for name in ("band", "object_scale"):
        pair = get(name)
        if isinstance(pair, (list, tuple)) and len(pair) == 2 and pair[0] > pair[1]:
            _fail(f"--{name.replace('_', '-')} {pair[0]} {pair[1]}: the first value must not be larger than the second")

    for split_name, layout_name in (("split", "layout"), ("threshold_split", "threshold_layout")):
        split, its_layout = get(split_name), getattr(args, layout_name, None) or getattr(args, "layout", None)
        if split is not None and its_layout in LAYOUT_SPLITS and split not in LAYOUT_SPLITS[its_layout]:
            _fail(f"--{split_name.replace('_', '-')} {split}: the '{its_layout}' layout has the splits "
                  f"{' and '.join(LAYOUT_SPLITS[its_layout])}")
