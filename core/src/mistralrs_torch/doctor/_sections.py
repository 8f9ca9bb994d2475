"""Doctor's sections that read facts: system, accelerators, libraries, plugins, features, recommendation."""

from __future__ import annotations

from collections.abc import Sequence

from mistralrs_torch.ops import CheckResult
from mistralrs_torch.plugins import PluginManager
from mistralrs_torch.resolution import NOT_INSTALLED, Recommendation, Resolution
from mistralrs_torch.system import SystemSnapshot

_GiB = 1024**3
_ISA = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "neon")
#: Library facts the core probes (torch's build, NVML, PATH), with the names doctor prints; the manifests
#: name the others.
LIBRARY_LABELS = {
    "cuda": "CUDA runtime (torch's)", "cuda_driver": "CUDA driver API", "nvidia_driver": "NVIDIA driver",
    "nvcc": "nvcc (needed only to build kernels)", "mps": "MPS (torch's)",
}


def system_checks(system: SystemSnapshot, confirmed: Sequence[CheckResult]) -> list[CheckResult]:
    cpu = system.cpu
    torch = system.torch
    checks = [
        CheckResult("os", f"{system.os} {system.os_release} ({system.arch})", status="ok"),
        CheckResult("python", system.python, status="ok"),
        CheckResult(
            "cpu",
            f"{cpu.model} ({cpu.vendor}, {cpu.cores} cores); instruction sets: "
            f"{' '.join(f for f in _ISA if f in cpu.flags) or 'none of ' + ', '.join(_ISA)}",
            status="ok",
        ),
        CheckResult("memory", f"{system.memory_total / _GiB:.1f} GiB", status="ok"),
        CheckResult(
            "torch",
            f"{torch.version}: CUDA {torch.cuda or 'no (CPU build)'}, MKL {'yes' if torch.mkl else 'no'}, "
            f"oneDNN {'yes' if torch.mkldnn else 'no'}, cuDNN {'yes' if torch.cudnn else 'no'}",
            status="ok",
        )
        if torch
        else CheckResult("torch", "not installed", "pip install torch", status="error"),
    ]
    return checks + list(confirmed)


def accelerator_checks(system: SystemSnapshot) -> list[CheckResult]:
    checks = [
        CheckResult(
            f"gpu {g.index}",
            f"{g.name} ({g.vendor}); compute capability {g.cc_label}; "
            f"{g.memory_total / _GiB:.0f} GiB"
            + (f", {g.memory_free / _GiB:.0f} GiB free" if g.memory_free is not None else ""),
            status="ok",
        )
        for g in system.gpus
    ]
    if not system.gpus:
        checks.append(CheckResult("gpus", "no GPU visible", status="info"))
    checks += [CheckResult("probe", note, status="info") for note in system.notes]
    return checks


def library_checks(system: SystemSnapshot, manager: PluginManager) -> list[CheckResult]:
    wanted = dict(LIBRARY_LABELS)
    for feature in manager.features:
        wanted.update({r.name: r.label or r.name for r in feature.manifest.libraries if r.name not in wanted})
    checks = []
    for name, label in wanted.items():
        version = system.libraries.get(name)
        if version is None:
            fix = (
                "CUDA not found: ensure the CUDA toolkit is installed and nvcc is in PATH"
                if name == "nvcc" and system.gpus_of("nvidia")
                else ""
            )
            checks.append(CheckResult(label, "missing", fix, status="info"))
        else:
            checks.append(CheckResult(label, f"found {version}".strip(), status="ok"))
    for extra in sorted(set(system.libraries) - set(wanted)):
        checks.append(CheckResult(extra, f"found {system.libraries[extra]}".strip(), status="ok"))
    for requirement in {r.module: r for f in manager.features for r in f.manifest.modules}.values():
        version = system.modules.get(requirement.module)
        label = f"{requirement.distribution} (module {requirement.module})"
        checks.append(
            CheckResult(label, f"found {version}".strip(), status="ok")
            if version is not None
            else CheckResult(label, "missing", requirement.install, status="info")
        )
    return checks


def plugin_checks(manager: PluginManager, strict: bool) -> list[CheckResult]:
    featureless = set(manager.featureless)
    checks = [
        CheckResult(
            p.name,
            f"{p.distribution} {p.version} registers no feature",
            f"upgrade or reinstall {p.distribution}, or disable it with MISTRALRS_DISABLE_PLUGINS={p.name}",
            status="warning",
        )
        if p in featureless
        else CheckResult(p.name, f"{p.distribution} {p.version}", status="ok")
        for p in manager.plugins
    ]
    checks += [
        CheckResult(
            b.plugin.name,
            f"{b.plugin.distribution} {b.plugin.version} is broken at {b.stage}: {b.error}",
            b.fix,
            status="error" if strict else "warning",
        )
        for b in manager.broken
    ]
    checks += [
        CheckResult(p.name, f"{p.distribution} {p.version} disabled by MISTRALRS_DISABLE_PLUGINS", status="info")
        for p in manager.disabled
    ]
    return checks


def feature_checks(resolution: Resolution, bound_ops: dict[str, set[str]] | None) -> list[CheckResult]:
    checks = []
    for f in resolution.features:
        if f.status == "broken":
            continue  # shown under plugins
        reason = f.reasons[0] if f.reasons else ""
        status = "ok" if f.status == "active" else "info"
        checks.append(CheckResult(f.name, f"{f.status}: {reason}", plugin=f.plugin.name, status=status))
        checks += [CheckResult(f.name, note, plugin=f.plugin.name, status="warning") for note in f.notes]
        if f.status == "active" and bound_ops is not None and f.manifest is not None:
            missing = [op for op in f.manifest.provides if op != "device" and f.name not in bound_ops.get(op, set())]
            if missing:
                checks.append(
                    CheckResult(
                        f.name,
                        f"active, but {f.plugin.distribution} {f.plugin.version} provides no "
                        f"{' or '.join(missing)} backend yet, so its {'/'.join(missing)} work runs elsewhere "
                        "and cannot be verified",
                        f"upgrade {f.plugin.distribution} to a version that implements it",
                        plugin=f.plugin.name,
                        status="warning",
                    )
                )
    return checks


def recommendation_checks(recommendation: Recommendation) -> list[CheckResult]:
    """The seed's rows for this machine, each recommended feature that is not active and why, optional features
    with their note, and one pip command for what is missing."""
    inactive = [f for f in recommendation.features if f.status != "active"]
    names = " ".join(recommendation.names) or "no features needed (the built-in generic CPU backend)"
    state = " (all active)" if recommendation.features and not inactive else ""
    checks = [
        CheckResult(
            "hardware",
            f"{' + '.join(recommendation.labels)}: recommended features: {names}{state}",
            status="info" if inactive else "ok",
        )
    ]
    for f in inactive:
        carried = f"{f.distribution} carries it" + (f"; {f.reason}" if f.reason else "")
        message = f"not installed ({carried})" if f.status == NOT_INSTALLED else f"{f.status}: {f.reason}"
        checks.append(CheckResult(f.name, message, f.fix, status="info"))
    for f in recommendation.optional:
        where = "active" if f.status == "active" else f"{f.status} ({f.distribution})"
        checks.append(
            CheckResult(
                f.name,
                f"optional here, {where}: {f.note}",
                f"pip install {f.distribution}" if f.status == NOT_INSTALLED else "",
                status="info",
            )
        )
    if recommendation.install:
        checks.append(
            CheckResult(
                "install",
                "one command installs every recommended feature missing here",
                recommendation.install,
                status="info",
            )
        )
    return checks
