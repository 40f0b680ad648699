"""The demo's settings: every shipped demo config resolves (its ``demo:`` section and presets),
and the class count, K and the presets come out as the configs' comments say."""
from pathlib import Path

import pytest

from demo_birds.settings import get_args_parser, resolve_settings
from utils.errors import DataError

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def settings(*argv):
    return resolve_settings(get_args_parser().parse_args([str(a) for a in argv]))


@pytest.mark.parametrize("name", ["demo.yaml", "demo_gpu.yaml"])
def test_every_demo_config_resolves(name):
    s = settings("--config", CONFIGS / name)
    assert s["families"] * s["species"] >= 2 and s["train_per_class"] > 0 and s["seeds"]


def test_the_cpu_presets():
    quick = settings("--config", CONFIGS / "demo.yaml")
    full = settings("--config", CONFIGS / "demo.yaml", "--preset", "full")
    assert (quick["families"], quick["species"], quick["train_per_class"], quick["seeds"]) == (6, 3, 24, [0])
    assert (full["train_per_class"], full["seeds"], full["ablation"]) == (40, [0, 1, 2], True)
    assert quick["aggressive_epochs"] == 0 and full["aggressive_epochs"] == 10
    # K = 0.15 x 18 classes = 2.7, rounded half up to 3 (the paper's 30 of 200)
    assert int(quick["top_k_ratio"] * 18 + 0.5) == 3


def test_an_unknown_demo_key_is_one_line_naming_the_file_and_line(tmp_path):
    cfg = tmp_path / "d.yaml"
    cfg.write_text("demo:\n  families: 3\n  classes: 6\n")
    with pytest.raises(DataError, match=r"d.yaml:3: unknown key 'classes'"):
        settings("--config", cfg)
