"""The NVIDIA GPU facts backends' support decisions need, from torch or from a snapshot.

A call names only the device type ("cuda"), not which GPU it lands on, so the
facts carry the lowest compute capability among the visible GPUs: a backend
that accepts a call must run it on every one of them. Reading a snapshot
imports nothing, so the same rules hold for a loaded profile on a CPU-only
machine; :meth:`GPUFacts.from_torch` imports torch (and creates no CUDA context).
"""

from __future__ import annotations

from dataclasses import dataclass

from mistralrs_torch.system._snapshot import SystemSnapshot


@dataclass(frozen=True)
class GPUFacts:
    """Lowest compute capability among the visible NVIDIA GPUs (a call may land on any), or why there is none."""

    capability: tuple[int, int] | None = None
    gpu: str = ""
    unusable: str = ""

    @property
    def cc_label(self) -> str:
        return f"{self.capability[0]}.{self.capability[1]}" if self.capability else "none"

    @classmethod
    def from_snapshot(cls, system: SystemSnapshot) -> GPUFacts:
        gpus = [g for g in system.gpus_of("nvidia") if g.compute_capability is not None]
        if "cuda" not in system.libraries:
            return cls(unusable="torch is a CPU build (no CUDA)")
        if not gpus:
            return cls(unusable="no NVIDIA GPU is visible")
        lowest = min(gpus, key=lambda g: g.compute_capability or (0, 0))  # gpus all have one: filtered above
        return cls(lowest.compute_capability, lowest.name)

    @classmethod
    def from_torch(cls) -> GPUFacts:
        """This machine as torch sees it (imports torch; creates no CUDA context)."""
        import torch

        if torch.version.cuda is None:
            return cls(unusable="torch is a CPU build (no CUDA)")
        if not torch.cuda.is_available():
            return cls(unusable=cuda_init_error())
        gpus = [(torch.cuda.get_device_capability(i), torch.cuda.get_device_name(i))
                for i in range(torch.cuda.device_count())]
        capability, name = min(gpus)
        return cls((int(capability[0]), int(capability[1])), name)


class FactsOnFirstUse:
    """For backends: ``self.facts`` is the facts given at construction, or torch's answer on first use.

    Hooks that create backends must not probe (they run at every bind, before any call); asking
    torch the first time a support question needs the facts moves that work to bind time. A
    subclass whose facts are richer overrides :meth:`facts_from_torch`.
    """

    _facts: GPUFacts | None = None

    def facts_from_torch(self) -> GPUFacts:
        return GPUFacts.from_torch()

    @property
    def facts(self) -> GPUFacts:
        if self._facts is None:
            self._facts = self.facts_from_torch()
        return self._facts


def cuda_init_error() -> str:
    """Why torch cannot initialise CUDA here, in torch's own words (first line)."""
    import torch

    try:
        torch.cuda.init()
    except Exception as exc:  # noqa: BLE001 - any failure is the answer to report
        return f"torch cannot initialise CUDA: {str(exc).strip().splitlines()[0]}"
    return "torch reports no usable CUDA device"
