"""Doctor's configuration checks: environment variables naming what is not installed or known."""

from __future__ import annotations

from collections.abc import Mapping

from mistralrs_torch._errors import ConfigError, InputError
from mistralrs_torch._settings import CORE_ENV_VARS
from mistralrs_torch.ops import CheckResult
from mistralrs_torch.parallel import collective_timeouts
from mistralrs_torch.plugins import PluginManager
from mistralrs_torch.validation import did_you_mean, env_list, shown


def environment_checks(environ: Mapping[str, str], manager: PluginManager) -> list[CheckResult]:
    known = set(CORE_ENV_VARS) | {v for f in manager.features for v in f.manifest.env_var_names()}
    checks = []
    for name in sorted(n for n in environ if n.startswith("MISTRALRS_") and n not in known):
        close = did_you_mean(name, sorted(known))
        checks.append(
            CheckResult(
                "environment",
                f"unknown variable {shown(name)}={shown(environ[name])}",
                f"did you mean {close}?"
                if close
                else f"known variables: {', '.join(sorted(k for k in known if k.startswith('MISTRALRS_')))}",
                status="warning",
            )
        )
    plugin_names = {p.name for p in (*manager.plugins, *manager.disabled)} | {b.plugin.name for b in manager.broken}
    try:
        disabled = env_list(environ, "MISTRALRS_DISABLE_PLUGINS")
    except ConfigError as exc:
        return [*checks, CheckResult("environment", str(exc), status="error")]
    for name in disabled:
        if name not in plugin_names:
            checks.append(
                CheckResult(
                    "environment",
                    f"MISTRALRS_DISABLE_PLUGINS names {shown(name)}, which is not an installed plugin",
                    f"installed plugins: {', '.join(sorted(plugin_names))}",
                    status="warning",
                )
            )
    return checks


def collective_timeout_check(environ: Mapping[str, str]) -> CheckResult:
    """The collective and rendezvous timeouts in force, or the variable that sets one wrongly.

    For the doctor checks of collective plugins (ring, nccl): one wording for every backend.
    """
    try:
        timeouts = collective_timeouts(environ)
    except InputError as exc:
        where = f"{exc.source}: {exc.field}" if exc.field else exc.source
        return CheckResult("collective timeout", f"{where} {exc.problem}", exc.fix, status="error")
    return CheckResult("collective timeout", f"collectives fail after {timeouts.collective:g}s without their peers; "
                       f"start-up waits {timeouts.rendezvous:g}s for every rank", status="info")
