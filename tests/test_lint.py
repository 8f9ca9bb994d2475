"""ruff and mypy pass over the tree, with the configuration in the root pyproject.toml (this is how CI runs them).

mypy keeps its cache in .mypy_cache (ignored by git): a fresh clone checks everything once (about 80 s of CPU,
most of it reading torch's annotations), later runs take seconds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(tool: str, *args: str, timeout: float) -> None:
    executable = BIN / tool
    if not executable.exists():
        pytest.fail(f"{tool} is not installed next to {sys.executable}: run `python3 -m uv sync --locked`")
    result = subprocess.run([str(executable), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                            check=False)
    assert result.returncode == 0, f"`{tool} {' '.join(args)}` failed:\n{result.stdout}{result.stderr}"


def test_ruff_passes() -> None:
    _run("ruff", "check", "--no-cache", ".", timeout=120)


def test_mypy_passes() -> None:
    _run("mypy", timeout=600)
