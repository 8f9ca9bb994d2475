"""Contract checks every plugin distribution must pass, usable from any plugin's own test suite.

Each check takes a :class:`PluginUnderTest` and raises AssertionError with a
message naming the plugin and what is wrong.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

from mistralrs_torch._distributions import plugin_entry_points
from mistralrs_torch._version import supports_api_version
from mistralrs_torch.features import FeatureManifest
from mistralrs_torch.plugins import ENTRY_POINT_GROUP, PluginManager
from mistralrs_torch.system import HARDWARE_CLASSES

#: Modules an entry point must not import: registering is not activating.
HEAVY_MODULES = ("torch", "numpy")


@dataclass(frozen=True)
class PluginUnderTest:
    """An installed plugin: its entry-point name, its distribution, and the manifests it must declare."""

    entry_point: str
    distribution: str
    manifests: tuple[FeatureManifest, ...]


def _entry_point(p: PluginUnderTest) -> str:
    found = [e for e in plugin_entry_points(ENTRY_POINT_GROUP) if e.name == p.entry_point]
    assert len(found) == 1, f"{p.entry_point}: expected one entry point in {ENTRY_POINT_GROUP}, found {len(found)}"
    assert found[0].distribution == p.distribution, \
        f"{p.entry_point}: registered by {found[0].distribution}, not {p.distribution}"
    return found[0].value


def entry_point_is_registered_by_its_distribution(p: PluginUnderTest) -> None:
    _entry_point(p)


def manifests_are_complete(p: PluginUnderTest) -> None:
    for m in p.manifests:
        assert m.distribution == p.distribution, f"{m.name}: distribution {m.distribution!r} is not {p.distribution!r}"
        assert m.summary and m.provides, f"{m.name}: needs a summary and at least one op it provides"
        unknown = set(m.recommended_for) - set(HARDWARE_CLASSES)
        assert not unknown, f"{m.name}: recommended_for names unknown hardware classes {sorted(unknown)}"
        assert supports_api_version(m.api_version), f"{m.name}: plugin API {m.api_version} is not supported here"


def discovery_loads_it_healthy_with_these_manifests(p: PluginUnderTest) -> None:
    manager = PluginManager(environ={}, strict=False)
    broken = [b for b in manager.broken if b.plugin.name == p.entry_point]
    assert not broken, f"{p.entry_point} is broken: {broken[0].stage}: {broken[0].error}"
    declared = tuple(f.manifest for f in manager.features if f.plugin.name == p.entry_point)
    assert set(declared) == set(p.manifests), \
        f"{p.entry_point} declares {[m.name for m in declared]}, expected {[m.name for m in p.manifests]}"


def requirements_name_installed_features(p: PluginUnderTest) -> None:
    """requires and auto_enables must name features some installed plugin provides (or this plugin itself)."""
    installed = {f.manifest.name for f in PluginManager(environ={}, strict=False).features}
    for m in p.manifests:
        unknown = sorted((set(m.requires) | set(m.auto_enables)) - installed)
        assert not unknown, (f"{m.name} requires {', '.join(unknown)}, which no installed plugin provides: install the "
                             f"plugin that ships {', '.join(unknown)} (see install_hints) or remove the requirement")


def exclusions_are_enforced(p: PluginUnderTest) -> None:
    """Selecting a feature together with one it excludes is rejected, whichever side declares the exclusion.

    A third party cannot edit the manifest it competes with: one side is enough, resolution enforces it both ways.
    """
    manager = PluginManager(environ={}, strict=False)
    installed = {f.manifest.name for f in manager.features}
    for m in p.manifests:
        for other in m.excludes:
            if other not in installed:
                continue
            rule = check_exclusion(manager, m.name, other)
            assert rule, (f"selecting {m.name} and {other} together was not rejected as mutually exclusive, "
                          f"though {m.name} excludes {other}")


def check_exclusion(manager: PluginManager, a: str, b: str) -> bool:
    """Whether an explicit selection of ``a`` and ``b`` fails with an exclusion (on an all-capable profile)."""
    from mistralrs_torch._errors import SelectionError
    from mistralrs_torch.resolution import Selection, resolve
    from mistralrs_torch.system import load_system

    for profile in ("h100", "apple-m2", "xeon-cpu"):
        try:
            resolve(manager.features, manager.broken, Selection("explicit", (a, b), "kit"), load_system(profile), {})
        except SelectionError as exc:
            if any(v.rule == "excludes" for v in exc.violations):
                return True
    return False


def entry_point_imports_no_heavy_modules(p: PluginUnderTest) -> None:
    module = _entry_point(p).partition(":")[0]
    code = (f"import sys, {module}\n"
            f"{module}.mistralrs_features()\n"
            f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY_MODULES!r})\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"importing {module} pulls in heavy modules or fails: {result.stderr[-500:]}"


#: Every check, in the order a report lists them.
CONTRACT_CHECKS: tuple[Callable[[PluginUnderTest], None], ...] = (
    entry_point_is_registered_by_its_distribution,
    manifests_are_complete,
    discovery_loads_it_healthy_with_these_manifests,
    requirements_name_installed_features,
    exclusions_are_enforced,
    entry_point_imports_no_heavy_modules,
)
