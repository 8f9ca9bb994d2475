"""docs/writing-a-plugin.md builds: its file blocks make a plugin that installs, passes the kit and doctor verifies."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "writing-a-plugin.md"
BLOCK = re.compile(r"^```\w+ file=(\S+)\n(.*?)^```$", re.M | re.S)


def test_the_guide_names_every_file_of_its_layout() -> None:
    files = dict(BLOCK.findall(GUIDE.read_text()))
    assert set(files) == {"pyproject.toml", "src/mistralrs_torch_numpy_blas/_manifest.py",
                          "src/mistralrs_torch_numpy_blas/_backend.py",
                          "src/mistralrs_torch_numpy_blas/_paged_attention.py",
                          "src/mistralrs_torch_numpy_blas/plugin.py", "src/mistralrs_torch_numpy_blas/__init__.py",
                          "tests/test_conformance.py"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory,
         install_into: Callable[[Path, Path], Path]) -> tuple[Path, Path]:
    project = tmp_path_factory.mktemp("guide-project")
    for name, text in BLOCK.findall(GUIDE.read_text()):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    target = tmp_path_factory.mktemp("guide-site")
    install_into(project, target)
    return project, target


def _run(target: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISTRALRS_")}
    env["PYTHONPATH"] = str(target)
    return subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.fixture(scope="module")
def kit(site: tuple[Path, Path]) -> subprocess.CompletedProcess[str]:
    """`mistralrs plugins test numpy_blas -v`: one line per backend and op, then one per case."""
    return _run(site[1], "-m", "mistralrs_torch", "plugins", "test", "numpy_blas", "-v")


def test_the_guides_plugin_is_listed_and_passes_the_kit(site: tuple[Path, Path],
                                                        kit: subprocess.CompletedProcess[str]) -> None:
    listed = _run(site[1], "-m", "mistralrs_torch", "plugins", "list")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("numpy-blas"))
    assert "mistralrs-torch-numpy-blas 0.1.0" in row and "active" in row and "attention,matmul" in row
    assert kit.returncode == 0, kit.stdout + kit.stderr
    assert kit.stdout.rstrip().endswith("verdict: passed"), kit.stdout
    # Both backends ran cases they claimed, and every refusal had a reason.
    for line in ("matmul backend numpy-blas-matmul (numpy-blas) linear",
                 "attention backend numpy-paged-attention (numpy-blas) paged_attention"):
        found = re.search(rf"^PASSED   {re.escape(line)}: [1-9][0-9]* claimed cases match the float64 reference; "
                          r"[0-9]+ refused, each with a reason$", kit.stdout, re.M)
        assert found, kit.stdout


def test_the_kit_ran_every_paged_attention_case_of_the_guides_backend(kit: subprocess.CompletedProcess[str]) -> None:
    cases = re.findall(r"^    (\w+) +(\w+) +cpu +(paged block\S+ .*?): (.*)$", kit.stdout, re.M)
    verified = {(dtype, case) for status, dtype, case, _ in cases if status == "verified"}
    # Both block sizes, one and several new tokens, grouped-query heads, NaN in the free slots: every case claimed
    # and matched in float32 and float64; bfloat16 and float16 refused with numpy's reason.
    assert {dtype for dtype, _ in verified} == {"float32", "float64"}
    assert len(verified) == 2 * len({case for _, case in verified}) >= 16, kit.stdout
    assert {dtype for status, dtype, _, _ in cases if status == "refused"} == {"float16", "bfloat16"}
    assert all("numpy's BLAS has no" in detail for status, _, _, detail in cases if status == "refused")
    assert {status for status, _, _, _ in cases} == {"verified", "refused"}


def test_the_guides_own_test_file_passes(site: tuple[Path, Path]) -> None:
    project, target = site
    result = _run(target, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(project / "tests"))
    assert result.returncode == 0, result.stdout[-3000:]


def test_doctor_runs_the_guides_check_and_verifies_its_backend(site: tuple[Path, Path]) -> None:
    _, target = site
    result = _run(target, "-m", "mistralrs_torch", "doctor")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "numpy [numpy_blas]" in result.stdout
    assert re.search(r"ok linear / numpy-blas-matmul \(numpy-blas\) float32 on cpu: verified", result.stdout)
    assert re.search(r"ok paged_attention / numpy-paged-attention \(numpy-blas\) float32 on cpu: verified",
                     result.stdout)
