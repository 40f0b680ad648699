"""What an install does: pyproject.toml declares the dependencies as compatible ranges and installs no
package (PyPI holds distributions named ``utils``, ``network`` and ``spol``: the repository's packages
run from the checkout); requirements.txt pins the quick start's versions of the same dependencies and
installs nothing else; .ci/run runs exactly the README's test command."""
import re
import tomllib

from utils.paths import REPO_ROOT

TOP_LEVEL = ("utils", "network", "spol", "sltnet", "localize", "demo_birds")


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[;\s]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _requirements() -> list[str]:
    lines = (REPO_ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def test_pyproject_installs_no_package_and_declares_ranges():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["tool"]["setuptools"]["packages"] == []
    assert "find" not in project["tool"]["setuptools"].get("packages", {})
    deps = project["project"]["dependencies"]
    assert {_name(d) for d in deps} == {"torch", "torchvision", "numpy", "opencv-python-headless", "pillow", "tqdm",
                                        "pyyaml", "matplotlib"}
    assert not [d for d in deps if "==" in d], "a pin would replace a CUDA torch already installed"
    assert "torch>=2.3" in deps and "torchvision>=0.18" in deps  # torch.amp.GradScaler(device) is torch 2.3's
    extras = project["project"]["optional-dependencies"]
    assert [_name(d) for d in extras["test"]] == ["pytest"]
    assert [_name(d) for d in extras["tensorboard"]] == ["tensorboard"]


def test_requirements_pin_the_same_dependencies_and_install_no_package():
    reqs = _requirements()
    assert not [r for r in reqs if r.startswith("-e") or r in (".", "./") or r.startswith("-")], reqs
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = {_name(d) for d in project["dependencies"]} | {"pytest"}
    assert {_name(r) for r in reqs} == wanted
    assert [r for r in reqs if _name(r) in ("torch", "torchvision") and "==" in r] == [
        r for r in reqs if _name(r) in ("torch", "torchvision")]
    assert not set(TOP_LEVEL) & {_name(r) for r in reqs}


def test_ci_runs_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = quick.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    ci = [line for line in (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd ", "export "))]
    assert len(ci) == 1 and ci[0].strip() in commands, (ci, commands)
    assert "python3 -m venv .venv && . .venv/bin/activate" in commands
