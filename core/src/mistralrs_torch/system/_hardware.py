"""Hardware classes: the rows of the seed's "Recommended Combinations by Hardware" table a machine falls into.

A machine falls into exactly one base row (its NVIDIA GPU generation, else a
Mac with a GPU that Metal drives, else its CPU) and into any of the rows that
add to it (several NVIDIA GPUs; a multi-node run). What each row recommends is
the seed's catalogue (``mistralrs_torch.features.catalogue()``); this module
knows hardware and launchers only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from mistralrs_torch.system._snapshot import SystemSnapshot

#: GPU vendors whose GPUs torch drives through Metal (MPS): Apple Silicon, and AMD GPUs in Intel Macs.
_METAL_VENDORS = ("apple", "amd")


def _nvidia_generation(system: SystemSnapshot) -> str:
    """The row of this machine's NVIDIA GPUs: every GPU must run what the row recommends."""
    gpus = system.gpus_of("nvidia")
    capabilities = [g.compute_capability for g in gpus if g.compute_capability is not None]
    if not gpus:
        return ""
    if not capabilities or min(capabilities) < (8, 0):
        return "nvidia-older"
    return "nvidia-hopper" if all(cc[0] == 9 for cc in capabilities) else "nvidia-ampere"


def _base_class(system: SystemSnapshot) -> str:
    generation = _nvidia_generation(system)
    if generation:
        return generation
    if system.os == "macos" and any(g.vendor in _METAL_VENDORS for g in system.gpus):
        return "apple-silicon"
    if system.cpu.vendor == "intel" and system.arch == "x86_64" and system.os != "macos":
        return "intel-cpu"
    # AMD and other CPUs: the seed recommends MKL for Intel CPUs only ("works on AMD but Intel-optimized").
    return "generic-cpu"


def _is_base(name: str) -> Callable[[SystemSnapshot, Mapping[str, str]], bool]:
    return lambda system, environ: _base_class(system) == name


def multi_node_launch(environ: Mapping[str, str]) -> bool:
    """Whether a launcher started ranks on several machines (torchrun's WORLD_SIZE above LOCAL_WORLD_SIZE, or
    a Slurm job over several nodes)."""
    def number(name: str) -> int:
        value = environ.get(name, "").strip()
        return int(value) if value.isascii() and value.isdigit() else 0

    world, local = number("WORLD_SIZE"), number("LOCAL_WORLD_SIZE")
    return (local > 0 and world > local) or number("SLURM_JOB_NUM_NODES") > 1 or number("SLURM_NNODES") > 1


#: class name -> whether a snapshot (and the environment it runs in) belongs to it. The names are the
#: catalogue's and the manifests' ``recommended_for`` values.
HARDWARE_CLASSES: dict[str, Callable[[SystemSnapshot, Mapping[str, str]], bool]] = {
    **{name: _is_base(name)
       for name in ("nvidia-ampere", "nvidia-hopper", "nvidia-older", "apple-silicon", "intel-cpu", "generic-cpu")},
    "multi-gpu-nvidia": lambda s, e: len(s.gpus_of("nvidia")) >= 2,
    "multi-node": lambda s, e: multi_node_launch(e),
}


def hardware_classes(system: SystemSnapshot, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The classes a machine belongs to: its base row first, then the rows that add to it, in table order.

    A row also applies when one of the variables the catalogue names for it is set (RING_CONFIG: multi-node).
    """
    from mistralrs_torch.features import catalogue

    environ = environ or {}
    found = [name for name, matches in HARDWARE_CLASSES.items() if matches(system, environ)]
    found += [row.hardware_class for row in catalogue().rows
              if row.hardware_class not in found and any(environ.get(v) for v in row.when_set)]
    order = list(HARDWARE_CLASSES)
    return tuple(sorted(found, key=lambda name: (not catalogue().row(name).is_base, order.index(name))))
