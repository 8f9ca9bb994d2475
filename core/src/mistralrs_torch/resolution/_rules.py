"""Evaluate one manifest's rules against a system snapshot and the environment.

Each broken rule becomes a Problem with a message and a fix in the seed's voice.
Nothing here names a plugin: every rule comes from manifest data.
"""

from __future__ import annotations

from collections.abc import Mapping

from mistralrs_torch._errors import Problem
from mistralrs_torch.features import FeatureManifest, ModuleRequirement
from mistralrs_torch.features._manifest import PLATFORM_LABELS
from mistralrs_torch.system import SystemSnapshot
from mistralrs_torch.validation import env_flag

#: What to do when no GPU of the required vendor is visible.
_GPU_FIX = {
    "nvidia": "check that `nvidia-smi` lists it and that CUDA_VISIBLE_DEVICES does not hide it",
    "apple": "run on a Mac with Apple Silicon or an AMD GPU",
    "amd": "check that the operating system lists the AMD GPU",
}


def hardware_problems(m: FeatureManifest, system: SystemSnapshot) -> list[Problem]:
    """Platform, CPU, GPU, library and module rules that fail on ``system`` (empty when all hold)."""
    problems = []
    remove = f"remove the {m.name} feature"
    if m.platforms and system.os not in m.platforms:
        where = PLATFORM_LABELS.get(system.os, system.os)
        text = f"{m.name} is {m.platform_label}-only" if len(m.platforms) == 1 else \
            f"{m.name} runs on {m.platform_label}, not {where}"
        # The other rules follow from the platform; one clear reason beats several echoes of it.
        return [Problem(m.name, text, remove, rule="platform")]
    if m.cpu_archs and system.arch not in m.cpu_archs:
        needs = f"{m.name} needs a {' or '.join(m.cpu_archs)} CPU; this one is {system.arch}"
        problems.append(Problem(m.name, needs, remove, rule="cpu"))
    missing_flags = [flag for flag in m.cpu_flags if flag not in system.cpu.flags]
    if missing_flags:
        problems.append(Problem(m.name, f"{m.name} needs the CPU instruction set(s) {', '.join(missing_flags)}, which "
                                f"this CPU ({system.cpu.model or system.cpu.vendor or system.arch}) lacks",
                                f"run on a CPU with {', '.join(missing_flags)}, or {remove}", rule="cpu"))
    if m.gpu is not None:
        problems += _gpu_problems(m, system)
    for library in m.libraries:
        if library.name not in system.libraries:
            problems.append(Problem(m.name, library.missing, library.fix, rule="library"))
    problems += [module_problem(m.name, module) for module in m.modules if module.module not in system.modules]
    return problems


def module_problem(feature: str, module: ModuleRequirement) -> Problem:
    """The problem of ``feature``'s module requirement whose module is not found."""
    return Problem(feature, f"{module.distribution} is not installed (module {module.module} not found)",
                   module.install, rule="module")


def _gpu_problems(m: FeatureManifest, system: SystemSnapshot) -> list[Problem]:
    gpu = m.gpu
    assert gpu is not None
    label, fix = gpu.label, _GPU_FIX[gpu.vendor]
    gpus = [g for g in system.gpus if g.vendor in gpu.vendors]
    if len(gpus) < gpu.min_count:
        if not gpus:
            return [Problem(m.name, f"{m.name} needs an {label}; none is visible", fix, rule="gpu")]
        return [Problem(m.name, f"{m.name} needs {gpu.min_count} {label}s; {len(gpus)} visible", fix, rule="gpu")]
    problems = []
    low, high = gpu.min_compute_capability, gpu.below_compute_capability
    for g in gpus:
        cc = g.compute_capability
        if cc is None:
            continue
        if low is not None and cc < low:
            problems.append(Problem(m.name, f"{m.name} needs compute capability >= {low[0]}.{low[1]}; "
                                    f"GPU {g.index} ({g.name}) has {g.cc_label}",
                                    f"use a GPU with compute capability >= {low[0]}.{low[1]}, "
                                    f"or remove the {m.name} feature",
                                    rule="compute-capability"))
        elif high is not None and cc >= high:
            window = f"{low[0]}.x" if low is not None and high == (low[0] + 1, 0) else f"below {high[0]}.{high[1]}"
            problems.append(Problem(m.name, f"{m.name} needs compute capability {window}; "
                                    f"GPU {g.index} ({g.name}) has {g.cc_label}",
                                    gpu.newer_gpu_fix or f"remove the {m.name} feature",
                                    rule="compute-capability"))
        if problems:
            break
    return problems


def disabled_by(m: FeatureManifest, environ: Mapping[str, str]) -> str | None:
    """The ``VAR=value`` that switches this feature off, if any (a non-boolean value is a ConfigError)."""
    for name in m.disabled_by:
        if env_flag(environ, name):
            return f"{name}={environ[name]}"
    return None


def auto_condition_problem(m: FeatureManifest, system: SystemSnapshot, environ: Mapping[str, str]) -> str | None:
    """Why auto mode leaves an otherwise runnable feature out (it stays available), or None."""
    # A blank value is no value: RING_CONFIG=" " must not switch ring on (the plugin reads it stripped too).
    if m.auto.env_set and not any(environ.get(name, "").strip() for name in m.auto.env_set):
        return f"set {' or '.join(m.auto.env_set)} to activate {m.name} (auto mode enables it only then)"
    if m.auto.min_gpus and m.gpu is not None:
        count, source, _ = _gpu_count(m, system, environ)
        if count < m.auto.min_gpus:
            return (f"auto mode enables {m.name} with {m.auto.min_gpus} or more GPUs; {source} "
                    "(select it explicitly to use it)")
    return None


def gpu_count_problem(m: FeatureManifest, system: SystemSnapshot, environ: Mapping[str, str]) -> Problem | None:
    """The problem with the number of GPUs the feature would use here (its count variables, its power-of-two
    rule), or None. Evaluated only where its GPU requirement holds."""
    return _gpu_count(m, system, environ)[2] if m.gpu is not None else None


def _gpu_count(m: FeatureManifest, system: SystemSnapshot,
               environ: Mapping[str, str]) -> tuple[int, str, Problem | None]:
    """(how many GPUs the feature would use: all visible ones, or as its count variables say; that in words; the
    problem with it, if any)."""
    gpu = m.gpu
    assert gpu is not None
    visible = sum(g.vendor in gpu.vendors for g in system.gpus)
    count, source = visible, f"{visible} {'is' if visible == 1 else 'are'} visible"
    var = next((v for v in gpu.count_vars if environ.get(v, "").strip()), "")
    if var:
        raw = environ[var].strip()
        if not (raw.isascii() and raw.isdigit() and int(raw) > 0):
            return (
                count,
                source,
                Problem(
                    m.name,
                    f"{var}={raw!r} is not a number of GPUs",
                    f"set it to 1, 2, 4, ... (at most {visible}, the GPUs visible here)",
                    rule="gpu-count",
                ),
            )
        count, source = int(raw), f"{var}={raw} uses {int(raw)}"
        if count > visible:
            return (
                count,
                source,
                Problem(
                    m.name,
                    f"{var}={count} asks for {count} GPUs but {visible} {'is' if visible == 1 else 'are'} visible",
                    f"set {var} to at most {visible}, or make more GPUs visible",
                    rule="gpu-count",
                ),
            )
    if gpu.power_of_two and count & (count - 1):
        lower = 1 << (count.bit_length() - 1)
        how = f"set {gpu.count_vars[0]}={lower} to use {lower} of them" if gpu.count_vars else f"make {lower} visible"
        return (
            count,
            source,
            Problem(
                m.name,
                f"{m.name} needs a power-of-two number of GPUs (1, 2, 4, 8, ...), and {source}",
                how,
                rule="gpu-count",
            ),
        )
    return count, source, None
