"""The out-of-tree example plugin installs next to the workspace and passes the conformance kit."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mistralrs-torch-chunked-attn"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, install_into: Callable[[Path, Path], Path]) -> Path:
    """A throwaway folder holding the installed example, used through PYTHONPATH (uv sync stays exact)."""
    target = tmp_path_factory.mktemp("example-site")
    install_into(EXAMPLE, target)
    return target


def _run(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISTRALRS_")}
    env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)


def test_the_example_is_listed_active(site: Path) -> None:
    result = _run(site, "-m", "mistralrs_torch", "plugins", "list")
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("chunked-attn"))
    assert "mistralrs-torch-chunked-attn 0.1.0" in row and "active" in row


def test_the_example_passes_the_conformance_kit(site: Path) -> None:
    result = _run(site, "-m", "mistralrs_torch", "plugins", "test", "chunked_attn")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failed" in result.stdout


def test_the_examples_own_tests_pass(site: Path) -> None:
    result = _run(site, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests"))
    assert result.returncode == 0, result.stdout[-3000:]
