"""Proof that torch's CPU BLAS is MKL, read from torch's build configuration (imports torch)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

__all__ = ["BlasInfo", "blas_info"]


@dataclass(frozen=True)
class BlasInfo:
    """What torch reports about its BLAS: whether it is MKL, MKL's version, and the CPU capability in use."""

    is_mkl: bool
    blas: str
    mkl_version: str
    cpu_capability: str


def blas_info() -> BlasInfo:
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
