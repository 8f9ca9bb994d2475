"""Hardware classes: the rows of the seed's "recommended combinations by hardware" table.

Manifests name these classes in ``recommended_for``; doctor matches them
against a snapshot to recommend features and the pip command that installs them.
"""

from __future__ import annotations

from collections.abc import Callable

from mistralrs_torch.system._snapshot import SystemSnapshot

__all__ = ["HARDWARE_CLASSES", "hardware_classes"]


def _nvidia_cc(system: SystemSnapshot, test: Callable[[tuple[int, int]], bool]) -> bool:
    return any(g.compute_capability and test(g.compute_capability) for g in system.gpus_of("nvidia"))


#: class name -> (the seed's label, whether a snapshot belongs to it)
HARDWARE_CLASSES: dict[str, tuple[str, Callable[[SystemSnapshot], bool]]] = {
    "nvidia-ampere": ("NVIDIA Ampere+ (RTX 30/40, A100)", lambda s: _nvidia_cc(s, lambda cc: cc >= (8, 0) and cc[0] != 9)),
    "nvidia-hopper": ("NVIDIA Hopper (H100)", lambda s: _nvidia_cc(s, lambda cc: cc[0] == 9)),
    "nvidia-older": ("NVIDIA older GPUs", lambda s: _nvidia_cc(s, lambda cc: cc < (8, 0))),
    "multi-gpu-nvidia": ("Multi-GPU NVIDIA", lambda s: len(s.gpus_of("nvidia")) >= 2),
    "apple-silicon": ("Apple Silicon", lambda s: s.os == "macos" and s.arch == "arm64"),
    "intel-cpu": ("Intel CPU", lambda s: s.cpu.vendor == "intel"),
    "multi-node": ("Multi-node/cross-platform", lambda s: False),
    "generic-cpu": ("Generic CPU", lambda s: not s.gpus),
}


def hardware_classes(system: SystemSnapshot) -> tuple[str, ...]:
    """The hardware classes a snapshot belongs to, in table order."""
    return tuple(name for name, (_, matches) in HARDWARE_CLASSES.items() if matches(system))
