"""Repository-anchored paths, so that no default depends on the current directory."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
OUTPUT_ROOT = REPO_ROOT / "output"
RESOURCE_DIR = REPO_ROOT / "resource"
DATASET_DIR = REPO_ROOT / "dataset"
CONFIG_DIR = REPO_ROOT / "configs"
