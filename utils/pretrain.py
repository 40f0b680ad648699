"""Moved to ``network/pretrain.py`` (the stand-in pretraining produces network weights, and
``utils`` imports nothing from ``network``): run ``python3 -m network.pretrain``."""
import sys

_MOVED = ("utils.pretrain moved to network.pretrain: run `python3 -m network.pretrain ...` "
          "or `from network.pretrain import ...`")
if __name__ == "__main__":
    sys.exit(f"error: {_MOVED}")
raise ImportError(_MOVED)
