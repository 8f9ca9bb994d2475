"""What support decisions need to know about this machine's NVIDIA GPUs, read from torch or from a snapshot.

Backends judge a call by these facts at bind time, so the same rules can be
evaluated for a loaded profile (an H100, a V100) on a CPU-only machine. Reading
a snapshot imports nothing; :meth:`CudaFacts.from_torch` imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from mistralrs_torch.system import GPUFacts, SystemSnapshot


def parse_version(text: str | None) -> tuple[int, ...] | None:
    """ "12.8" -> (12, 8); "9.8.0.87" -> (9, 8, 0, 87); None or unparsable -> None."""
    if not text:
        return None
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts) or None


def cudnn_version_number(text: str | None) -> int | None:
    """A cuDNN version string as torch.backends.cudnn.version() numbers it: "9.8.0.87" -> 90800, "8.9.7" -> 8907."""
    version = parse_version(text)
    if version is None:
        return None
    major, minor, patch = ((*version, 0, 0))[:3]
    # cuDNN 9 changed CUDNN_VERSION from major*1000 to major*10000 (minor can exceed 9).
    return major * 10000 + minor * 100 + patch if major >= 9 else major * 1000 + minor * 100 + patch


def cudnn_label(number: int | None) -> str:
    """90800 -> "9.8.0"; 8907 -> "8.9.7"."""
    if number is None:
        return "unknown"
    if number >= 90000:
        return f"{number // 10000}.{number % 10000 // 100}.{number % 100}"
    return f"{number // 1000}.{number % 1000 // 100}.{number % 100}"


@dataclass(frozen=True)
class CudaFacts(GPUFacts):
    """The GPU facts of :class:`mistralrs_torch.system.GPUFacts`, plus what cuDNN decisions need."""

    #: The cuDNN version torch loads, numbered as torch.backends.cudnn.version() does; None without cuDNN.
    cudnn: int | None = None
    #: torch's version, for messages ("torch 2.11.0+cu128").
    torch_version: str = ""

    @classmethod
    def from_snapshot(cls, system: SystemSnapshot) -> CudaFacts:
        """The facts a machine described by ``system`` would give (profiles, --system files)."""
        gpus = GPUFacts.from_snapshot(system)
        cudnn = cudnn_version_number(system.libraries.get("cudnn")) if "cudnn" in system.libraries else None
        return cls(gpus.capability, gpus.gpu, gpus.unusable, cudnn, system.torch.version if system.torch else "")

    @classmethod
    def from_torch(cls) -> CudaFacts:
        """The facts of this machine as torch sees them (imports torch; creates no CUDA context)."""
        import torch

        cudnn = None
        if torch.version.cuda and torch.backends.cudnn.is_available():
            cudnn = int(torch.backends.cudnn.version())
        gpus = GPUFacts.from_torch()
        return cls(gpus.capability, gpus.gpu, gpus.unusable, cudnn, torch.__version__)
