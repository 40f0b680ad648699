"""Shared fixtures: tiny hand-made dataset trees (see tests/builders.py for their exact content)."""
import pytest
import torch

try:  # `python -m pytest` from the repository root puts the root on sys.path
    from tests.builders import make_tiny_cub, make_tiny_ilsvrc, make_tiny_metadata, make_tiny_openimages
except ImportError:  # plain `pytest`: pytest puts tests/ itself on sys.path
    from builders import make_tiny_cub, make_tiny_ilsvrc, make_tiny_metadata, make_tiny_openimages

torch.set_num_threads(1)


@pytest.fixture
def tiny_cub(tmp_path):
    """A CUB-200-2011 tree: 4 images (2 train, 2 test) of 2 classes, 32x24 px, with segmentations."""
    return make_tiny_cub(tmp_path / "CUB_200_2011")


@pytest.fixture
def tiny_ilsvrc(tmp_path):
    """An ILSVRC tree: 2 wnids, 3 train images, 2 val images with Pascal-VOC XML boxes."""
    return make_tiny_ilsvrc(tmp_path / "ILSVRC")


@pytest.fixture
def tiny_metadata(tmp_path):
    """A Choe et al. metadata tree: splits train (no boxes), val, test (one image with 2 boxes)."""
    return make_tiny_metadata(tmp_path / "meta_ds")


@pytest.fixture
def tiny_openimages(tmp_path):
    """An OpenImages30k tree (Choe et al.'s format): train (labels only), val (2 images, 3 instance masks,
    one ignore mask)."""
    return make_tiny_openimages(tmp_path / "OpenImages")


@pytest.fixture
def opencv_thread_spy(monkeypatch):
    """``spy(module, name)`` -> a list to which every call of ``module.cv2.<name>`` appends the cv2
    thread count it ran under. cv2's thread count is 2 during the test and restored after it."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(2)

    def spy(module, name: str) -> list:
        seen, real = [], getattr(cv2, name)

        def wrapper(*args, **kwargs):
            seen.append(cv2.getNumThreads())
            return real(*args, **kwargs)

        monkeypatch.setattr(module.cv2, name, wrapper)
        return seen

    yield spy
    cv2.setNumThreads(before)
