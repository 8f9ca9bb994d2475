"""The mistralrs-metal manifests against the seed's feature table, its entry point, and its import cost."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

from mistralrs import PLUGIN_API_VERSION, PluginManager
from mistralrs._version import supports_api_version
from mistralrs_metal import METAL
from mistralrs_metal import plugin

DISTRIBUTION = "mistralrs-metal"
ENTRY_POINT = "metal"
MODULE = "mistralrs_metal.plugin"

NAMES = {
    "metal": METAL,
}

#: manifest, platforms, requires, auto-enables, excludes, GPU vendor (the seed's feature table)
SEED_ROWS = [
    (METAL, ("macos",), (), (), ("cuda",), "apple"),
]


@pytest.mark.parametrize(("manifest", "platforms", "requires", "auto_enables", "excludes", "gpu"), SEED_ROWS,
                         ids=[row[0].name for row in SEED_ROWS])
def test_manifest_matches_the_seed_row(manifest, platforms, requires, auto_enables, excludes, gpu) -> None:
    assert tuple(sorted(manifest.platforms)) == platforms
    assert manifest.requires == requires
    assert manifest.auto_enables == auto_enables
    assert manifest.excludes == excludes
    assert (manifest.gpu.vendor if manifest.gpu else None) == gpu
    assert set(manifest.auto_enables) <= set(manifest.requires)


@pytest.mark.parametrize("manifest", [row[0] for row in SEED_ROWS], ids=[row[0].name for row in SEED_ROWS])
def test_manifest_identity(manifest) -> None:
    assert NAMES[manifest.name] is manifest
    assert manifest.distribution == DISTRIBUTION
    assert manifest.summary
    assert manifest.provides
    assert manifest.recommended_for
    assert manifest.api_version == PLUGIN_API_VERSION
    assert supports_api_version(manifest.api_version)


def test_exclusions_are_declared_on_both_sides() -> None:
    installed = {f.manifest.name: f.manifest for f in PluginManager(environ={}).features}
    for manifest, *_ in SEED_ROWS:
        for other in manifest.excludes:
            assert manifest.name in installed[other].excludes, (manifest.name, other)


def test_every_named_feature_exists() -> None:
    installed = {f.manifest.name for f in PluginManager(environ={}).features}
    for manifest, *_ in SEED_ROWS:
        assert set(manifest.requires) | set(manifest.auto_enables) | set(manifest.excludes) <= installed


def test_the_hook_returns_exactly_these_manifests() -> None:
    assert tuple(plugin.mistralrs_features()) == tuple(row[0] for row in SEED_ROWS)


def test_the_entry_point_is_registered_by_this_distribution() -> None:
    (entry_point,) = [e for e in importlib.metadata.entry_points(group="mistralrs.plugins") if e.name == ENTRY_POINT]
    assert entry_point.value == MODULE
    assert entry_point.dist is not None and entry_point.dist.metadata["Name"] == DISTRIBUTION


def test_discovery_loads_this_plugin_healthy() -> None:
    manager = PluginManager(environ={})
    assert manager.broken == ()
    owners = {f.manifest.name: f.plugin for f in manager.features}
    for manifest, *_ in SEED_ROWS:
        assert (owners[manifest.name].name, owners[manifest.name].distribution) == (ENTRY_POINT, DISTRIBUTION)


def test_importing_the_entry_point_imports_no_torch() -> None:
    code = (f"import sys, {MODULE}\n"
            f"{MODULE}.mistralrs_features()\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy'))\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_the_seed_package_table_holds() -> None:
    # pip install mistralrs-metal brings in mistralrs-accelerate (the seed's Python package table).
    requirements = [r.split(";")[0].replace(" ", "") for r in importlib.metadata.requires("mistralrs-metal") or []]
    for dependency in ["mistralrs-accelerate"]:
        assert any(r.startswith(dependency + "==") for r in requirements), requirements


def test_metal_needs_an_apple_gpu_through_mps() -> None:
    assert "mps" in {lib.name for lib in METAL.libraries}
    assert "device" in METAL.provides


def test_paged_attention_is_opt_in_on_metal() -> None:
    assert METAL.paged_attention == "opt-in"
