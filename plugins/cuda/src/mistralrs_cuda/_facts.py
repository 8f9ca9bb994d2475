"""What support decisions need to know about this machine's NVIDIA GPUs, read from torch or from a snapshot.

Backends judge a call by these facts at bind time, so the same rules can be
evaluated for a loaded profile (an H100, a V100) on a CPU-only machine. Reading
a snapshot imports nothing; :meth:`CudaFacts.from_torch` imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from mistralrs.system import SystemSnapshot

__all__ = ["CudaFacts", "cudnn_version_number", "parse_version"]


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
    major, minor, patch = (version + (0, 0))[:3]
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
class CudaFacts:
    """The GPU facts a backend's ``supports`` needs.

    A call names only the device type ("cuda"), not which GPU it lands on, so
    ``capability`` is the lowest compute capability among the visible GPUs: a
    backend that accepts a call must be able to run it on every one of them.
    """

    #: Lowest compute capability among visible NVIDIA GPUs; None when torch can use none.
    capability: tuple[int, int] | None = None
    #: The GPU that has that capability, for messages.
    gpu: str = ""
    #: The cuDNN version torch loads, numbered as torch.backends.cudnn.version() does; None without cuDNN.
    cudnn: int | None = None
    #: torch's version, for messages ("torch 2.11.0+cu128").
    torch_version: str = ""
    #: Why torch cannot use a GPU here ("" when it can).
    unusable: str = ""

    @property
    def cc_label(self) -> str:
        return f"{self.capability[0]}.{self.capability[1]}" if self.capability else "none"

    @classmethod
    def from_snapshot(cls, system: SystemSnapshot) -> CudaFacts:
        """The facts a machine described by ``system`` would give (profiles, --system files)."""
        gpus = [g for g in system.gpus_of("nvidia") if g.compute_capability is not None]
        torch_version = system.torch.version if system.torch else ""
        cudnn = cudnn_version_number(system.libraries.get("cudnn")) if "cudnn" in system.libraries else None
        if "cuda" not in system.libraries:
            return cls(cudnn=cudnn, torch_version=torch_version, unusable="torch is a CPU build (no CUDA)")
        if not gpus:
            return cls(cudnn=cudnn, torch_version=torch_version, unusable="no NVIDIA GPU is visible")
        lowest = min(gpus, key=lambda g: g.compute_capability)  # type: ignore[arg-type, return-value]
        return cls(lowest.compute_capability, lowest.name, cudnn, torch_version)

    @classmethod
    def from_torch(cls) -> CudaFacts:
        """The facts of this machine as torch sees them (imports torch; creates no CUDA context)."""
        import torch

        cudnn = None
        if torch.version.cuda and torch.backends.cudnn.is_available():
            cudnn = int(torch.backends.cudnn.version())
        if torch.version.cuda is None:
            return cls(cudnn=cudnn, torch_version=torch.__version__, unusable="torch is a CPU build (no CUDA)")
        if not torch.cuda.is_available():
            return cls(cudnn=cudnn, torch_version=torch.__version__, unusable=cuda_init_error())
        gpus = [(torch.cuda.get_device_capability(i), torch.cuda.get_device_name(i))
                for i in range(torch.cuda.device_count())]
        capability, name = min(gpus)
        return cls((int(capability[0]), int(capability[1])), name, cudnn, torch.__version__)


def cuda_init_error() -> str:
    """Why torch cannot initialise CUDA here, in torch's own words (first line)."""
    import torch

    try:
        torch.cuda.init()
    except Exception as exc:  # noqa: BLE001 - any failure is the answer to report
        return f"torch cannot initialise CUDA: {str(exc).strip().splitlines()[0]}"
    return "torch reports no usable CUDA device"
