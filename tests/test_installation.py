"""The Rust engine's same-named project beside ours, and a damaged installation of ours, as doctor reports them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mistralrs-torch-chunked-attn"

#: Shaped like the Rust engine's wheels on PyPI: distribution `mistralrs`, a top-level `mistralrs` package
#: (here one that refuses to be imported) and a `mistralrs` command that is not ours.
UPSTREAM = {
    "pyproject.toml": """
[project]
name = "mistralrs"
version = "0.9.5"
description = "Fast and easy LLM serving (stand-in for the Rust engine's bindings)."
[project.scripts]
mistralrs = "mistralrs:main"
[build-system]
requires = ["hatchling>=1.24"]
build-backend = "hatchling.build"
[tool.hatch.build.targets.wheel]
packages = ["mistralrs"]
""",
    "mistralrs/__init__.py": "raise ImportError('the stand-in Rust extension is not importable')\n",
}


@pytest.fixture(scope="module")
def upstream_site(tmp_path_factory: pytest.TempPathFactory, install_into: Callable[[Path, Path], Path]) -> Path:
    project = tmp_path_factory.mktemp("upstream-project")
    for name, text in UPSTREAM.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text, encoding="utf-8")
    return install_into(project, tmp_path_factory.mktemp("upstream-site"))


def _run(site: Path, *args: str, path_first: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISTRALRS_") and k != "RING_CONFIG"}
    env["PYTHONPATH"] = str(site)
    if path_first is not None:
        env["PATH"] = f"{path_first}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([sys.executable, "-m", "mistralrs_torch", *args], env=env, cwd=site, capture_output=True,
                          text=True, timeout=300, check=False)


def _installation(report: dict) -> list[dict]:
    return [c for c in report["sections"]["configuration"] if c["name"] == "installation"]


def test_plugins_list_works_beside_the_rust_engines_package(upstream_site: Path) -> None:
    assert (upstream_site / "mistralrs" / "__init__.py").is_file()
    result = _run(upstream_site, "plugins", "list")
    assert result.returncode == 0, result.stderr
    assert "mistralrs-torch 0.1.0" in result.stdout and "active: cpu" in result.stdout


def test_doctor_tells_the_other_project_apart_and_warns_about_its_command(upstream_site: Path) -> None:
    result = _run(upstream_site, "doctor", "--no-verify", "--json", path_first=upstream_site / "bin")
    assert result.returncode == 0, result.stdout + result.stderr
    checks = _installation(json.loads(result.stdout))
    info = [c for c in checks if c["status"] == "info"]
    assert len(info) == 1 and info[0]["message"].startswith("mistralrs 0.9.5 is installed: another project")
    (warning,) = [c for c in checks if c["status"] == "warning"]
    assert str(upstream_site / "bin" / "mistralrs") in warning["message"]
    assert "python -m mistralrs_torch" in warning["fix"]
    assert not [c for c in checks if c["status"] == "error"]


def test_our_own_command_first_on_path_is_not_a_warning(upstream_site: Path) -> None:
    ours = Path(sys.executable).parent
    assert (ours / "mistralrs").is_file()
    result = _run(upstream_site, "doctor", "--no-verify", "--json", path_first=ours)
    assert not [c for c in _installation(json.loads(result.stdout)) if c["status"] == "warning"]


def test_a_damaged_distribution_of_ours_is_an_error_with_the_reinstall_command(
        tmp_path: Path, install_into: Callable[[Path, Path], Path]) -> None:
    site = install_into(EXAMPLE, tmp_path / "site")
    package = site / "mistralrs_torch_chunked_attn"
    with open(package / "_kernel.py", "a", encoding="utf-8") as file:
        file.write("# changed by another installation\n")
    (package / "README.md").unlink(missing_ok=True)
    shutil.move(package / "__init__.py", tmp_path / "moved.py")
    result = _run(site, "doctor", "--no-verify", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    (error,) = [c for c in _installation(json.loads(result.stdout)) if c["status"] == "error"]
    assert error["message"].startswith("mistralrs-torch-chunked-attn 0.1.0 is damaged: ")
    assert "1 file(s) missing: mistralrs_torch_chunked_attn/__init__.py" in error["message"]
    assert "1 file(s) overwritten by another installation: mistralrs_torch_chunked_attn/_kernel.py" in error["message"]
    assert "pip install --force-reinstall --no-deps mistralrs-torch-chunked-attn==0.1.0" in error["fix"]


def test_the_workspace_installation_is_intact(run_cli) -> None:
    result = run_cli("doctor", "--no-verify", "--json")
    assert not [c for c in _installation(json.loads(result.stdout)) if c["status"] == "error"], result.stdout
