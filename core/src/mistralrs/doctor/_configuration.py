"""Doctor's configuration checks: environment variables, foreign distributions, config files, plugin checks."""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from mistralrs._distributions import distribution_summary, installed_names, plugin_entry_points
from mistralrs._settings import CORE_ENV_VARS, env_list
from mistralrs.ops import CheckResult
from mistralrs.plugins import ENTRY_POINT_GROUP, PluginManager

__all__ = ["environment_checks", "foreign_distribution_checks"]

#: The Summary our core distribution publishes; another `mistralrs` (the Rust engine's bindings) differs.
OUR_SUMMARY = "Pluggable hardware backends for LLM inference"


def environment_checks(environ: Mapping[str, str], manager: PluginManager) -> list[CheckResult]:
    known = set(CORE_ENV_VARS) | {v for f in manager.features for v in f.manifest.env_var_names()}
    checks = []
    for name in sorted(n for n in environ if n.startswith("MISTRALRS_") and n not in known):
        close = difflib.get_close_matches(name, sorted(known), n=1)
        checks.append(CheckResult("environment", "warning", f"unknown variable {name}={environ[name]!r}",
                                  f"did you mean {close[0]}?" if close else
                                  f"known variables: {', '.join(sorted(k for k in known if k.startswith('MISTRALRS_')))}"))
    plugin_names = {p.name for p in (*manager.plugins, *manager.disabled)} | {b.plugin.name for b in manager.broken}
    for name in env_list(environ, "MISTRALRS_DISABLE_PLUGINS"):
        if name not in plugin_names:
            checks.append(CheckResult("environment", "warning", f"MISTRALRS_DISABLE_PLUGINS names {name!r}, "
                                      "which is not an installed plugin",
                                      f"installed plugins: {', '.join(sorted(plugin_names))}"))
    return checks


def foreign_distribution_checks() -> list[CheckResult]:
    """Distributions named like ours that are another project (PyPI's mistralrs* are the Rust engine's bindings)."""
    checks = []
    summary = distribution_summary("mistralrs")
    if summary is not None and not summary.startswith(OUR_SUMMARY):
        checks.append(CheckResult("distributions", "error", f"the installed distribution 'mistralrs' is not this project "
                                  f"(its summary: {summary!r})",
                                  "pip uninstall mistralrs, then install this workspace (see README: uv sync)"))
    ours = {ep.distribution.lower().replace("_", "-") for ep in plugin_entry_points(ENTRY_POINT_GROUP)}
    for name in installed_names():
        dashed = name.replace("_", "-")
        if dashed.startswith("mistralrs-") and dashed not in ours:
            checks.append(CheckResult("distributions", "warning",
                                      f"{dashed} is installed but registers no mistralrs plugin: it is probably "
                                      "another project of the same name (the Rust engine's Python bindings)",
                                      f"pip uninstall {dashed}, then install the plugin from this workspace"))
    return checks
