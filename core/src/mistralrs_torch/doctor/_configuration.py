"""Doctor's configuration checks: environment variables naming what is not installed or known."""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from mistralrs_torch._settings import CORE_ENV_VARS, env_list
from mistralrs_torch.ops import CheckResult
from mistralrs_torch.plugins import PluginManager

__all__ = ["environment_checks"]


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
