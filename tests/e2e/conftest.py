"""Every test in this folder runs whole programs (the demo, stage scripts end to end, subprocesses,
torchrun, SIGKILL): each is marked ``slow`` (``python3 -m pytest -q -m "not slow"`` leaves them out)."""
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before -m selects by marker
def pytest_collection_modifyitems(items):
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.slow)
