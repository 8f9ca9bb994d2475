"""torch's CPU BLAS as its build configuration reports it (a deep probe: imports torch when called).

BLAS plugins (mkl, accelerate) prove with it that torch's GEMM is theirs before they claim a call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class BlasInfo:
    """What torch reports about its BLAS: its name (BLAS_INFO), whether it is MKL, MKL's version, the CPU capability."""

    is_mkl: bool
    blas: str
    mkl_version: str
    cpu_capability: str


def blas_info() -> BlasInfo:
    """Read torch's build configuration (imports torch)."""
    import torch

    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=([^,\s]+)", config)
    version = re.search(r"Math Kernel Library Version ([0-9.]+)", config)
    capability = re.search(r"CPU capability usage: (\S+)", config)
    return BlasInfo(
        is_mkl=torch.backends.mkl.is_available() and blas is not None and blas.group(1) == "mkl",
        blas=blas.group(1) if blas else "unknown",
        mkl_version=version.group(1) if version else "",
        cpu_capability=capability.group(1) if capability else "unknown",
    )
