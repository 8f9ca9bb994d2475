"""Text and JSON renderings of plugin lists, resolutions and system snapshots."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mistralrs_torch._version import __version__
from mistralrs_torch.features import PluginInfo
from mistralrs_torch.plugins import PluginManager
from mistralrs_torch.resolution import FeatureStatus, Resolution
from mistralrs_torch.system import SystemSnapshot

LIST_SCHEMA = "mistralrs.plugins.list/1"
RESOLVE_SCHEMA = "mistralrs.plugins.resolve/1"
_GiB = 1024**3


def _feature_json(f: FeatureStatus) -> dict[str, Any]:
    m = f.manifest
    return {
        "feature": f.name, "status": f.status, "plugin": f.plugin.name, "distribution": f.plugin.distribution,
        "version": f.plugin.version, "provides": list(m.provides) if m else [], "reasons": list(f.reasons),
        "notes": list(f.notes),
    }


def _common_json(resolution: Resolution) -> dict[str, Any]:
    return {
        "mistralrs": __version__,
        "system": resolution.system.source,
        "selection": {"mode": resolution.selection.mode, "source": resolution.selection.source,
                      "features": list(resolution.selection.features)},
        "active": list(resolution.active),
    }


def list_json(resolution: Resolution, manager: PluginManager) -> dict[str, Any]:
    return {"schema": LIST_SCHEMA, **_common_json(resolution),
            "features": [_feature_json(f) for f in resolution.features],
            "disabled_plugins": [_plugin_json(p) for p in manager.disabled],
            "featureless_plugins": [_plugin_json(p) for p in manager.featureless]}


def resolve_json(resolution: Resolution) -> dict[str, Any]:
    return {"schema": RESOLVE_SCHEMA, **_common_json(resolution), "errors": [],
            "features": [_feature_json(f) for f in resolution.features]}


def _plugin_json(p: PluginInfo) -> dict[str, str]:
    return {"plugin": p.name, "distribution": p.distribution, "version": p.version}


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    # The last cell is not padded: widths stop one short of the row.
    return ["  ".join([cell.ljust(w) for cell, w in zip(row, widths, strict=False)] + [row[-1]]).rstrip()
            for row in rows]


def list_text(resolution: Resolution, manager: PluginManager) -> str:
    rows = [("FEATURE", "PLUGIN", "DISTRIBUTION", "STATUS", "PROVIDES", "REASON")]
    for f in resolution.features:
        m = f.manifest
        reason = f.reasons[0] if f.reasons else ""
        reason = "; ".join([reason, *(f"note: {n}" for n in f.notes)]) if f.notes else reason
        rows.append(
            (
                f.name or f"({f.plugin.name})",
                f.plugin.name,
                f"{f.plugin.distribution} {f.plugin.version}",
                f.status,
                ",".join(m.provides) if m else "-",
                reason,
            )
        )
    lines = [f"mistralrs {__version__} plugins on {resolution.system.source} ({resolution.selection.source})", ""]
    lines += _table(rows)
    lines += ["", f"active: {' '.join(resolution.active) or '(none)'}"]
    if manager.disabled:
        lines.append(
            "disabled by MISTRALRS_DISABLE_PLUGINS: "
            + ", ".join(f"{p.name} ({p.distribution})" for p in manager.disabled)
        )
    lines += [
        f"warning: plugin {p.name} ({p.distribution} {p.version}) registers no feature: upgrade or reinstall "
        f"{p.distribution}, or disable it with MISTRALRS_DISABLE_PLUGINS={p.name}"
        for p in manager.featureless
    ]
    return "\n".join(lines)


def resolve_text(resolution: Resolution) -> str:
    lines = [
        f"selection: {resolution.selection.source}",
        f"system: {resolution.system.source}",
        f"active: {' '.join(resolution.active) or '(none)'}",
        "",
    ]
    for status in ("active", "available", "unavailable", "broken"):
        group = [f for f in resolution.features if f.status == status]
        if group:
            lines.append(f"{status}:")
            for f in group:
                lines.append(
                    f"  {f.name} ({f.plugin.distribution})"
                    if f.name
                    else f"  (plugin {f.plugin.name}, {f.plugin.distribution}: declared no feature)"
                )
                lines += [f"      {r}" for r in f.reasons] + [f"      note: {n}" for n in f.notes]
    return "\n".join(lines)


def system_text(system: SystemSnapshot) -> str:
    cpu = system.cpu
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "neon") if f in cpu.flags]
    lines = [
        f"system: {system.source}",
        f"os: {system.os} {system.os_release} ({system.arch}), Python {system.python}",
        f"cpu: {cpu.model} ({cpu.vendor}, {cpu.cores} cores; {' '.join(isa) or 'no AVX2/AVX-512/AMX/NEON'})",
        f"memory: {system.memory_total / _GiB:.1f} GiB",
        "torch: "
        + (
            f"{system.torch.version} (CUDA {system.torch.cuda or 'none'}, MKL {'yes' if system.torch.mkl else 'no'}, "
            f"cuDNN {'yes' if system.torch.cudnn else 'no'})"
            if system.torch
            else "not installed"
        ),
    ]
    lines += [
        f"gpu {g.index}: {g.name} ({g.vendor}, compute capability {g.cc_label}, {g.memory_total / _GiB:.0f} GiB)"
        for g in system.gpus
    ] or ["gpus: none visible"]
    lines.append(
        "libraries: " + (", ".join(f"{k} {v}".strip() for k, v in sorted(system.libraries.items())) or "none found")
    )
    if system.modules:
        lines.append("modules: " + ", ".join(f"{k} {v}".strip() for k, v in sorted(system.modules.items())))
    lines += [f"note: {n}" for n in system.notes]
    return "\n".join(lines)
