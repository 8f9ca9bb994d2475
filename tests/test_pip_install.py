"""The pip route, as a new user takes it: scripts/build-wheels, then plain pip into a fresh virtual environment.

The environment gets its third-party dependencies (torch and the rest of the lock, gigabytes for a CUDA
torch) from uv's cache, hard-linked, offline and without resolving (`uv export` of the lock, installed with
--no-deps); then plain pip, --isolated so no machine-wide pip configuration leaks in, installs our
distributions with --no-index: from the wheelhouse (`pip install --find-links DIST ...`), and from paths
(`pip install ./core ./plugins/mkl`, built with the hatchling seeded from the same cache).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = ("mistralrs_torch", "mistralrs_torch_accelerate", "mistralrs_torch_cuda", "mistralrs_torch_flash_attn",
           "mistralrs_torch_metal", "mistralrs_torch_mkl", "mistralrs_torch_nccl", "mistralrs_torch_ring")

pytestmark = pytest.mark.slow


def _run(args: list[str | Path], env: dict[str, str], cwd: Path,
         timeout: int = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd,
                            timeout=timeout, check=False)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed ({result.returncode}):\n" \
                                   f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory, uv_command: list[str]) -> Path:
    dist = tmp_path_factory.mktemp("wheelhouse")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MISTRALRS_", "PIP_", "VIRTUAL_ENV"))}
    # The script finds uv through $UV first: hand it the one this run found.
    uv = {"UV": uv_command[0]} if len(uv_command) == 1 else {}
    _run([ROOT / "scripts" / "build-wheels", dist], {**env, **uv, "UV_OFFLINE": "1"}, ROOT)
    return dist


def test_the_wheelhouse_holds_a_wheel_and_an_sdist_of_every_member_with_license_and_types(wheelhouse: Path) -> None:
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert sorted(p.name.split("-")[0] for p in wheelhouse.glob("*.whl")) == sorted(MEMBERS)
    assert sorted(p.name.split("-")[0] for p in wheelhouse.glob("*.tar.gz")) == sorted(MEMBERS)
    for wheel in wheelhouse.glob("*.whl"):
        package = wheel.name.split("-")[0]
        with zipfile.ZipFile(wheel) as archive:
            names = archive.namelist()
            info = next(n for n in names if n.endswith(".dist-info/METADATA"))
            metadata = archive.read(info).decode()
            (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
            assert archive.read(license_file).decode() == license_text
        assert f"{package}/py.typed" in names, wheel.name
        assert "License-Expression: MIT" in metadata and "License-File: LICENSE" in metadata
        assert "Classifier: Typing :: Typed" in metadata and "Project-URL: " in metadata
        assert "Programming Language :: Python :: 3.13" in metadata
        assert "## Requirements" in metadata and "## Check it" in metadata, wheel.name  # the README
    for sdist in wheelhouse.glob("*.tar.gz"):
        with tarfile.open(sdist) as archive:
            members = archive.getnames()
        assert any(m.endswith("/LICENSE") and m.count("/") == 1 for m in members), sdist.name


def test_plain_pip_installs_the_core_then_a_plugin_into_a_fresh_environment(wheelhouse: Path, tmp_path: Path,
                                                                            uv_command: list[str]) -> None:
    try:
        import ensurepip  # noqa: F401 - a Python whose distributor removed it cannot make a venv with pip
    except ImportError:
        pytest.skip(f"{sys.executable} has no ensurepip: its venvs get no pip")
    venv = tmp_path / "venv"
    bin_dir = venv / ("Scripts" if sys.platform == "win32" else "bin")
    python = bin_dir / ("python.exe" if sys.platform == "win32" else "python")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MISTRALRS_", "PIP_", "VIRTUAL_ENV", "PYTHON", "UV_")) and k != "RING_CONFIG"}
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", venv], env, tmp_path)

    # Third-party dependencies, torch included, from uv's cache: the locked versions, nothing resolved.
    locked = tmp_path / "third-party.txt"
    exported = _run([*uv_command, "export", "--locked", "--no-dev", "--no-emit-workspace", "--no-hashes", "--quiet",
                     "--format", "requirements-txt", "--project", ROOT], env, tmp_path)
    locked.write_text(exported.stdout, encoding="utf-8")
    _run([*uv_command, "pip", "install", "--offline", "--no-deps", "--quiet", "--python", python, "-r", locked],
         env, tmp_path)
    # The build backend, for the path route below: uv's cache holds it since uv built the workspace.
    _run([*uv_command, "pip", "install", "--offline", "--quiet", "--python", python, "hatchling"], env, tmp_path)

    pip = [python, "-m", "pip", "install", "--isolated", "--disable-pip-version-check", "--no-index"]
    _run([*pip, "--find-links", wheelhouse, "mistralrs-torch"], env, tmp_path)
    located = _run([python, "-c", "import mistralrs_torch; print(mistralrs_torch.__file__)"], env, tmp_path)
    assert Path(located.stdout.strip()).is_relative_to(venv), located.stdout  # the wheel, not this checkout

    # Only the core: doctor tells a Hopper box what to install.
    core_only = _run([bin_dir / "mistralrs", "doctor", "--system", "h100", "--no-verify"], env, tmp_path).stdout
    assert "NVIDIA Hopper (H100): recommended features: cuda cudnn flash-attn-v3" in core_only
    assert "fix: pip install mistralrs-torch-cuda mistralrs-torch-flash-attn" in core_only
    listed = _run([bin_dir / "mistralrs", "plugins", "list"], env, tmp_path).stdout
    assert "builtin" in listed and "mistralrs-torch-mkl" not in listed

    _run([*pip, "--find-links", wheelhouse, "mistralrs-torch-mkl"], env, tmp_path)
    listed = _run([bin_dir / "mistralrs", "plugins", "list"], env, tmp_path).stdout
    assert "mistralrs-torch-mkl 0.1.0" in listed, listed
    doctor = _run([bin_dir / "mistralrs", "doctor", "--no-verify"], env, tmp_path).stdout
    assert "ok mkl: mistralrs-torch-mkl 0.1.0" in doctor and "mistralrs-torch-cuda" not in doctor.split("PLUGINS")[1]

    # The other documented route: pip install ./core ./plugins/mkl (from paths; hatchling seeded above).
    _run([*pip, "--no-build-isolation", "--force-reinstall", "--no-deps", ROOT / "core", ROOT / "plugins" / "mkl"],
         env, tmp_path)
    shown = _run([python, "-m", "pip", "show", "--isolated", "--disable-pip-version-check", "-f",
                  "mistralrs-torch-mkl"], env, tmp_path).stdout
    assert "direct_url.json" in shown  # installed from the path this time
    assert "mistralrs-torch-mkl 0.1.0" in _run([bin_dir / "mistralrs", "plugins", "list"], env, tmp_path).stdout
