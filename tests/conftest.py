"""Fixtures shared by the cross-plugin and end-to-end tests.

Every fixture builds fresh state: a new PluginManager per test, fake plugins
under the test's own tmp_path with unique module names, and subprocess
environments with no MISTRALRS_* or RING_CONFIG variables leaking in.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from mistralrs_torch import PluginManager, Resolution, Selection, SystemSnapshot, load_system, resolve

GROUP = "mistralrs.plugins"

#: Every feature the workspace ships: the built-in generic CPU plus the nine seed features.
ALL_FEATURES = frozenset(
    {"cpu", "cuda", "cudnn", "flash-attn", "flash-attn-v3", "metal", "accelerate", "mkl", "nccl", "ring"})


def _clean_environ(base: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith("MISTRALRS_") and k != "RING_CONFIG"}
    env.pop("PYTHONPATH", None)
    return env


@pytest.fixture
def all_features() -> frozenset[str]:
    return ALL_FEATURES


@pytest.fixture
def manager() -> PluginManager:
    """The installed plugins, discovered afresh, with no MISTRALRS_* variable in force."""
    return PluginManager(environ={})


@pytest.fixture
def resolve_on(manager: PluginManager) -> Callable[..., Resolution]:
    """resolve_on(system_or_profile, selection=auto, environ={}) with the installed plugins."""

    def run(system: SystemSnapshot | str, selection: Selection | None = None,
            environ: Mapping[str, str] | None = None) -> Resolution:
        snapshot = load_system(system) if isinstance(system, str) else system
        return resolve(manager.features, manager.broken, selection or Selection(), snapshot, dict(environ or {}))

    return run


@pytest.fixture
def explicit() -> Callable[..., Selection]:
    """explicit("cuda", "cudnn") -> an explicit selection as --features makes it."""

    def make(*names: str, source: str = "--features") -> Selection:
        return Selection(mode="explicit", features=tuple(names), source=source)

    return make


@pytest.fixture
def profile_json() -> Callable[[str], dict]:
    """A shipped profile as a JSON-ready dict (a deep copy, free to edit)."""

    def load(name: str) -> dict:
        return json.loads(json.dumps(load_system(name).to_json()))

    return load


@pytest.fixture
def installed_entry_points() -> list[importlib.metadata.EntryPoint]:
    """The entry points of the plugins installed in this environment."""
    return list(importlib.metadata.entry_points(group=GROUP))


@pytest.fixture
def fake_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., importlib.metadata.EntryPoint]:
    """fake_plugin(source, name="x") writes a module with a unique name and returns an entry point to it."""
    folder = tmp_path / "fake_plugins"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    created: list[str] = []

    def make(source: str, name: str = "fake") -> importlib.metadata.EntryPoint:
        module = f"mrs_fake_{name.replace('-', '_')}_{uuid.uuid4().hex[:12]}"
        (folder / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        created.append(module)
        return importlib.metadata.EntryPoint(name=name, value=module, group=GROUP)

    make.folder = folder  # type: ignore[attr-defined]  # the fixture hands its state on as attributes of the factory
    make.created = created  # type: ignore[attr-defined]  # the fixture hands its state on as attributes of the factory
    yield make
    for module in created:
        sys.modules.pop(module, None)


def good_plugin_source(feature: str = "goodfeat") -> str:
    return f"""
        from mistralrs_torch import FeatureManifest, hookimpl

        @hookimpl
        def mistralrs_features():
            return (FeatureManifest(name={feature!r}, summary="a healthy fake feature",
                                    distribution="fake-good", provides=("matmul",)),)
        """


@pytest.fixture
def good_plugin_source_for() -> Callable[[str], str]:
    return good_plugin_source


@pytest.fixture
def cli_env() -> dict[str, str]:
    """os.environ without MISTRALRS_*, RING_CONFIG or PYTHONPATH, for subprocesses."""
    return _clean_environ(os.environ)


@pytest.fixture
def run_cli(tmp_path: Path, cli_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """run_cli("plugins", "list", env={...}) runs `python -m mistralrs_torch` in a clean folder."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()

    def run(*args: str, env: Mapping[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        environ = {**cli_env, **(env or {})}
        return subprocess.run([sys.executable, "-m", "mistralrs_torch", *args], capture_output=True, text=True,
                              env=environ, cwd=cwd or workdir, timeout=120, check=False)

    return run


@pytest.fixture
def run_python(tmp_path: Path, cli_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """run_python(code) runs `python -c code` in a clean folder and environment."""

    def run(code: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                              env={**cli_env, **(env or {})}, cwd=tmp_path, timeout=180, check=False)

    return run


@pytest.fixture(scope="session")
def uv_command() -> list[str]:
    """uv as `uv run` exposes it ($UV), on PATH, or as the module the README installs into python3 (under
    `uv run`, python3 is the project's environment, which has no uv)."""
    found = os.environ.get("UV") or shutil.which("uv")
    if found:
        return [found]
    for python in (sys.executable, shutil.which("python3")):
        if python and subprocess.run([python, "-m", "uv", "--version"], capture_output=True,
                                     check=False).returncode == 0:
            return [python, "-m", "uv"]
    pytest.fail("uv is not installed: python3 -m pip install uv (the README's set-up does), or run under `uv run`")


@pytest.fixture(scope="session")
def install_into(uv_command: list[str]) -> Callable[[Path, Path], Path]:
    """install_into(project, target) installs a project folder with no dependencies into target, used through
    PYTHONPATH (uv sync is exact: nothing is installed into the workspace's own environment)."""

    def install(project: Path, target: Path) -> Path:
        subprocess.run([*uv_command, "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(project)],
                       check=True, timeout=300)
        return target

    return install


@pytest.fixture
def fake_distribution() -> Callable[..., Path]:
    """fake_distribution(site, name, module_source, entry_point="broken"): a real installed distribution in the
    folder ``site`` (NAME-0.1.dist-info with METADATA, entry_points.txt and an empty RECORD, plus its module
    NAME_mod), for subprocesses that put ``site`` on PYTHONPATH."""

    def make(site: Path, name: str, module_source: str, entry_point: str = "broken") -> Path:
        site.mkdir(exist_ok=True)
        info = site / f"{name}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n", encoding="utf-8")
        (info / "entry_points.txt").write_text(f"[mistralrs.plugins]\n{entry_point} = {name}_mod\n", encoding="utf-8")
        (info / "RECORD").write_text("", encoding="utf-8")
        (site / f"{name}_mod.py").write_text(module_source, encoding="utf-8")
        return site

    return make
