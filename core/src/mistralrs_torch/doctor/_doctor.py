"""``mistralrs doctor``: every section, verification of each bound backend, one exit status."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from mistralrs_torch._distributions import plugin_entry_points
from mistralrs_torch._errors import ConfigError, SelectionError
from mistralrs_torch.doctor._configuration import environment_checks
from mistralrs_torch.doctor._installation import installation_checks
from mistralrs_torch.doctor._report import DoctorReport
from mistralrs_torch.doctor._sections import (
    accelerator_checks,
    feature_checks,
    library_checks,
    plugin_checks,
    recommendation_checks,
    system_checks,
)
from mistralrs_torch.features import catalogue
from mistralrs_torch.ops import CheckResult, Device
from mistralrs_torch.plugins import ENTRY_POINT_GROUP, PluginManager
from mistralrs_torch.resolution import Resolution, read_selection, recommend, resolve
from mistralrs_torch.system import SystemSnapshot, module_versions
from mistralrs_torch.validation import env_flag, shown

#: The name of the check that judges MISTRALRS_DEVICE_LAYERS.
DEVICE_LAYERS_CHECK = "device layers"


def run_doctor(*, features: str | None = None, system: SystemSnapshot | None = None, verify: bool = True,
               paged_attention: bool | None = None, environ: Mapping[str, str] | None = None,
               manager: PluginManager | None = None, progress: Callable[[str], None] = lambda _: None) -> DoctorReport:
    """Diagnose this machine (or ``system``): verification runs only on this machine and when ``verify``."""
    environ = os.environ if environ is None else environ
    configuration: list[CheckResult] = []
    try:
        strict = env_flag(environ, "MISTRALRS_STRICT_PLUGINS")
    except ConfigError as exc:
        strict = False
        configuration.append(CheckResult("environment", str(exc), status="error"))
    manager = manager or PluginManager(environ=environ, strict=False)
    here = system is None
    snapshot = _with_catalogue_modules(manager.probe_system()) if here else system
    assert snapshot is not None
    configuration += environment_checks(environ, manager) + installation_checks(environ)
    resolution: Resolution | None = None
    feature_problems: list[CheckResult] = []
    try:
        selection = read_selection(features, environ)
        configuration.append(CheckResult("selection", selection.source, status="info"))
        resolution = resolve(manager.features, manager.broken, selection, snapshot, environ)
    except SelectionError as exc:
        feature_problems = [CheckResult(v.subject, v.message, v.fix, status="error") for v in exc.violations]
    except ConfigError as exc:
        configuration.append(CheckResult("configuration", str(exc), status="error"))
    runtime, verifications, note, confirmed = None, [], "", []
    device_layers: list[CheckResult] = []
    if resolution is None:
        note = "skipped: fix the errors above first"
    elif not here:
        note = f"skipped: --system {snapshot.source} describes another machine"
    elif not verify:
        note = "skipped (--no-verify)"
    else:
        from mistralrs_torch.doctor._confirm import confirm_with_torch
        from mistralrs_torch.doctor._verify import verify_runtime
        from mistralrs_torch.runtime import Runtime

        confirmed = confirm_with_torch(snapshot)
        try:
            runtime = Runtime(resolution, manager, paged_attention=paged_attention, environ=environ)
        except ConfigError as exc:
            configuration.append(CheckResult("configuration", str(exc), status="error"))
            note = "skipped: fix the errors above first"
        else:
            configuration += [CheckResult("device", f"{runtime.device.torch_device} ({runtime.device.name}, "
                                          f"from {runtime.device.feature})", status="info"),
                              *_selection_checks(runtime),
                              CheckResult("paged attention", "on" if runtime.paged_attention_enabled else
                                          "off (opt-in here: --paged-attn or MISTRALRS_PAGED_ATTN=1)", status="info")]
            device_layers = device_layers_check(runtime.collective_backends, runtime.devices, environ)
            plugins = {f.name: f.plugin.name for f in resolution.features}
            verifications = [replace(v, plugin=plugins.get(v.feature, "")) for v in verify_runtime(runtime, progress)]
    if resolution is not None:
        active = frozenset(resolution.active)
        for info, checks in manager.call_each("mistralrs_doctor_checks", _is_check_list, active=active, system=snapshot,
                                             environ=environ):
            configuration += [replace(c, plugin=info.name) for c in checks]
    # A plugin that judged the explicit device map itself (nccl, which knows its own rule) speaks for it.
    if not any(c.subject == DEVICE_LAYERS_CHECK for c in configuration):
        configuration += device_layers
    bound = None
    if runtime is not None:
        bound = {"attention": {b.feature for b in runtime.attention_backends},
                 "matmul": {b.feature for b in runtime.matmul_backends},
                 "layers": {b.feature for b in runtime.layer_backends},
                 "collectives": {b.feature for b in runtime.collective_backends}}
        # An active feature whose backend hook failed at bind: its work would silently run elsewhere.
        feature_problems += [
            CheckResult(
                ", ".join(b.features) or b.plugin.name,
                f"active, but plugin {b.plugin.name} ({b.plugin.distribution} "
                f"{b.plugin.version}) failed at bind time in {b.stage}: {b.error}",
                b.fix,
                plugin=b.plugin.name,
                status="error",
            )
            for b in runtime.broken
        ]
    sections = {
        "system": tuple(system_checks(snapshot, confirmed)),
        "accelerators": tuple(accelerator_checks(snapshot)),
        "libraries": tuple(library_checks(snapshot, manager)),
        "plugins": tuple(plugin_checks(manager, strict)),  # after hooks ran: late quarantines show too
        "features": tuple(feature_problems + (feature_checks(resolution, bound) if resolution else [])),
        "configuration": tuple(configuration),
        "recommendation": tuple(
            recommendation_checks(recommend(resolution, environ, _not_loaded(manager, environ))) if resolution else ()
        ),
    }
    return DoctorReport(snapshot.source, sections, tuple(verifications), note, manager.broken)


_STATUSES = ("ok", "info", "warning", "error")


def _with_catalogue_modules(snapshot: SystemSnapshot) -> SystemSnapshot:
    """This machine's snapshot, with the modules the catalogue's features need looked up too: the recommendation
    says what a feature whose plugin is not installed would still lack."""
    wanted = [m for f in catalogue().features.values() for m in f.modules if m.module not in snapshot.modules]
    return replace(snapshot, modules={**snapshot.modules, **module_versions(wanted)}) if wanted else snapshot


def _not_loaded(manager: PluginManager, environ: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """Installed distributions whose plugins were not loaded: (why, fix), so the recommendation does not call them
    missing."""
    found = {
        p.distribution: (
            f"its plugin {p.name!r} is disabled by MISTRALRS_DISABLE_PLUGINS",
            f"remove {p.name} from MISTRALRS_DISABLE_PLUGINS",
        )
        for p in manager.disabled
    }
    if not env_flag(environ, "MISTRALRS_PLUGIN_AUTOLOAD", default=True):
        for entry in plugin_entry_points(ENTRY_POINT_GROUP):
            found.setdefault(
                entry.distribution,
                ("installed, but MISTRALRS_PLUGIN_AUTOLOAD=0 loads no plugin", "unset MISTRALRS_PLUGIN_AUTOLOAD"),
            )
    return found


def _is_check_list(result: object) -> bool:
    return isinstance(result, (list, tuple)) and all(
        isinstance(c, CheckResult)
        and c.status in _STATUSES
        and all(isinstance(v, str) for v in (c.subject, c.message, c.fix, c.plugin))
        for c in result
    )


def _selection_checks(runtime: Any) -> list[CheckResult]:
    """The selection policy and, under measured selection, every choice its cache holds for this machine."""
    tuner = runtime.tuner
    if tuner is None:
        return [
            CheckResult(
                "selection policy",
                "priority: the first supporting backend in dispatch priority "
                "(MISTRALRS_SELECTION=measured times them instead)",
                status="info",
            )
        ]
    cache = tuner.cache
    checks = [
        CheckResult(
            "selection policy",
            f"measured: the fastest correct backend per signature; "
            f"{len(cache.entries)} choice(s) cached in {cache.path or '(memory only)'}",
            status="info",
        )
    ]
    checks += [
        CheckResult("selection policy", note, "nothing to do: it is tuned again as it runs", status="warning")
        for note in cache.notes
    ]
    for key, entry in sorted(cache.entries.items()):
        timed = ", ".join(
            f"{name} {seconds * 1e6:.1f} us"
            for name, seconds in sorted(entry.get("times", {}).items(), key=lambda kv: kv[1])
        )
        checks.append(CheckResult("measured choice", f"{key} -> {entry['winner']} ({timed})", status="info"))
    return checks


def device_layers_check(
    collective_backends: Sequence[Any], devices: Sequence[Device], environ: Mapping[str, str]
) -> list[CheckResult]:
    """MISTRALRS_DEVICE_LAYERS, when set, judged against these devices and collective backends (a runtime's, or
    the ones a plugin's doctor check describes from a snapshot). Checks are named "device layers"."""
    from mistralrs_torch.parallel._device_map import DEVICE_LAYERS_VAR, device_map_entries, device_mapping_mode

    value = environ.get(DEVICE_LAYERS_VAR, "").strip()
    if not value:
        return []
    mode, reason = device_mapping_mode(collective_backends, devices, environ)
    if mode == "disabled":
        return [
            CheckResult(
                DEVICE_LAYERS_CHECK,
                f"{DEVICE_LAYERS_VAR}={shown(value)} is set, but {reason}",
                f"unset {DEVICE_LAYERS_VAR}: each process here computes on one device",
                status="error",
            )
        ]
    try:
        entries = device_map_entries(value, devices)
    except ConfigError as exc:
        return [
            CheckResult(
                DEVICE_LAYERS_CHECK,
                f"{DEVICE_LAYERS_VAR}={shown(value)}: {exc}",
                f"fix {DEVICE_LAYERS_VAR} or unset it for the automatic map",
                status="error",
            )
        ]
    placed = ", ".join(f"{device}: {count} layer{'s' if count != 1 else ''}" for device, count in entries)
    return [
        CheckResult(
            DEVICE_LAYERS_CHECK,
            f"explicit map from {DEVICE_LAYERS_VAR}: {placed} "
            f"({sum(c for _, c in entries)} layers: a model with another count is refused)",
            status="info",
        )
    ]
