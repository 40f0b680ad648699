"""Shared fixtures: tiny hand-made dataset trees (see tests/builders.py for their exact content)."""
import pytest
import torch

try:  # `python -m pytest` from the repository root puts the root on sys.path
    from tests.builders import make_tiny_cub, make_tiny_ilsvrc, make_tiny_metadata
except ImportError:  # plain `pytest`: pytest puts tests/ itself on sys.path
    from builders import make_tiny_cub, make_tiny_ilsvrc, make_tiny_metadata

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
