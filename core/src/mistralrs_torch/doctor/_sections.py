"""Doctor's sections that read facts: system, accelerators, libraries, plugins, features, recommendation."""

from __future__ import annotations

from collections.abc import Sequence

from mistralrs_torch.ops import CheckResult
from mistralrs_torch.plugins import PluginManager
from mistralrs_torch.resolution import Resolution
from mistralrs_torch.system import HARDWARE_CLASSES, SystemSnapshot, hardware_classes

__all__ = ["accelerator_checks", "feature_checks", "library_checks", "plugin_checks", "recommendation_checks",
           "system_checks"]

_GiB = 1024**3
_ISA = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "neon")
#: Library facts the core probes, with the names doctor prints.
LIBRARY_LABELS = {
    "cuda": "CUDA runtime (torch's)", "cuda_driver": "CUDA driver API", "nvidia_driver": "NVIDIA driver",
    "nvcc": "nvcc (needed only to build kernels)", "cudnn": "cuDNN", "nccl": "NCCL", "mkl": "MKL",
    "accelerate": "Accelerate", "mps": "MPS", "flash_attn": "flash-attn",
}


def _ok(name: str, message: str, status: str = "ok", fix: str = "") -> CheckResult:
    return CheckResult(name, status, message, fix)


def system_checks(system: SystemSnapshot, confirmed: Sequence[CheckResult]) -> list[CheckResult]:
    cpu = system.cpu
    torch = system.torch
    checks = [
        _ok("os", f"{system.os} {system.os_release} ({system.arch})"),
        _ok("python", system.python),
        _ok("cpu", f"{cpu.model} ({cpu.vendor}, {cpu.cores} cores); instruction sets: "
                   f"{' '.join(f for f in _ISA if f in cpu.flags) or 'none of ' + ', '.join(_ISA)}"),
        _ok("memory", f"{system.memory_total / _GiB:.1f} GiB"),
        _ok("torch", f"{torch.version}: CUDA {torch.cuda or 'no (CPU build)'}, MKL {'yes' if torch.mkl else 'no'}, "
                     f"oneDNN {'yes' if torch.mkldnn else 'no'}, cuDNN {'yes' if torch.cudnn else 'no'}")
        if torch else _ok("torch", "not installed", "error", "pip install torch"),
    ]
    return checks + list(confirmed)


def accelerator_checks(system: SystemSnapshot) -> list[CheckResult]:
    checks = [_ok(f"gpu {g.index}", f"{g.name} ({g.vendor}); compute capability {g.cc_label}; "
                                    f"{g.memory_total / _GiB:.0f} GiB"
                                    + (f", {g.memory_free / _GiB:.0f} GiB free" if g.memory_free is not None else ""))
              for g in system.gpus]
    if not system.gpus:
        checks.append(_ok("gpus", "no GPU visible", "info"))
    checks += [_ok("probe", note, "info") for note in system.notes]
    return checks


def library_checks(system: SystemSnapshot, manager: PluginManager) -> list[CheckResult]:
    wanted = dict(LIBRARY_LABELS)
    for feature in manager.features:
        wanted.update({r.name: r.name for r in feature.manifest.libraries if r.name not in wanted})
    checks = []
    for name, label in wanted.items():
        version = system.libraries.get(name)
        if version is None:
            fix = "CUDA not found: ensure the CUDA toolkit is installed and nvcc is in PATH" \
                if name == "nvcc" and system.gpus_of("nvidia") else ""
            checks.append(_ok(label, "missing", "info", fix))
        else:
            checks.append(_ok(label, f"found {version}".strip()))
    for extra in sorted(set(system.libraries) - set(wanted)):
        checks.append(_ok(extra, f"found {system.libraries[extra]}".strip()))
    for requirement in {r.module: r for f in manager.features for r in f.manifest.modules}.values():
        version = system.modules.get(requirement.module)
        label = f"{requirement.distribution} (module {requirement.module})"
        checks.append(_ok(label, f"found {version}".strip()) if version is not None
                      else _ok(label, "missing", "info", requirement.install))
    return checks


def plugin_checks(manager: PluginManager, strict: bool) -> list[CheckResult]:
    featureless = set(manager.featureless)
    checks = [CheckResult(p.name, "warning", f"{p.distribution} {p.version} registers no feature",
                          f"upgrade or reinstall {p.distribution}, or disable it with "
                          f"MISTRALRS_DISABLE_PLUGINS={p.name}")
              if p in featureless else _ok(p.name, f"{p.distribution} {p.version}") for p in manager.plugins]
    checks += [CheckResult(b.plugin.name, "error" if strict else "warning",
                           f"{b.plugin.distribution} {b.plugin.version} is broken at {b.stage}: {b.error}", b.fix)
               for b in manager.broken]
    checks += [_ok(p.name, f"{p.distribution} {p.version} disabled by MISTRALRS_DISABLE_PLUGINS", "info")
               for p in manager.disabled]
    return checks


def feature_checks(resolution: Resolution, bound_ops: dict[str, set[str]] | None) -> list[CheckResult]:
    checks = []
    for f in resolution.features:
        if f.status == "broken":
            continue  # shown under plugins
        reason = f.reasons[0] if f.reasons else ""
        status = "ok" if f.status == "active" else "info"
        checks.append(CheckResult(f.name, status, f"{f.status}: {reason}", plugin=f.plugin.name))
        checks += [CheckResult(f.name, "warning", note, plugin=f.plugin.name) for note in f.notes]
        if f.status == "active" and bound_ops is not None and f.manifest is not None:
            missing = [op for op in f.manifest.provides if op != "device" and f.name not in bound_ops.get(op, set())]
            if missing:
                checks.append(CheckResult(
                    f.name, "warning", f"active, but {f.plugin.distribution} {f.plugin.version} provides no "
                    f"{' or '.join(missing)} backend yet, so its {'/'.join(missing)} work runs elsewhere and cannot be verified",
                    f"upgrade {f.plugin.distribution} to a version that implements it", f.plugin.name))
    return checks


def recommendation_checks(resolution: Resolution) -> list[CheckResult]:
    classes = hardware_classes(resolution.system)
    installed = {f.name: f for f in resolution.features if f.manifest is not None}
    checks = []
    for hardware in classes:
        label = HARDWARE_CLASSES[hardware][0]
        wanted = [f for f in installed.values() if hardware in f.manifest.recommended_for]  # type: ignore[union-attr]
        wanted.sort(key=lambda f: -f.manifest.selection_priority)  # type: ignore[union-attr]
        kept: list = []
        for f in wanted:  # keep the runnable, higher-priority side of every exclusion
            rival = next((k for k in kept if f.name in k.manifest.excludes or k.name in f.manifest.excludes), None)
            if rival is None and f.status != "unavailable":
                kept.append(f)
        names = [f.name for f in kept if f.name != "cpu"]
        distributions = sorted({f.plugin.distribution for f in kept})
        if not names:
            checks.append(_ok(label, "no features needed (the built-in generic CPU backend)", "info"))
            continue
        inactive = [n for n in names if installed[n].status != "active"]
        state = "all active" if not inactive else f"not active: {' '.join(inactive)}"
        checks.append(_ok(label, f"recommended features: {' '.join(names)} ({state})",
                          "ok" if not inactive else "info", f"pip install {' '.join(distributions)}"))
    return checks
