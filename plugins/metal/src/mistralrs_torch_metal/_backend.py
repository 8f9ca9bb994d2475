"""Metal through torch MPS: the device, attention and matmul backends (imports torch)."""

from __future__ import annotations

import torch

from mistralrs_torch.generic import TorchAttention, TorchLayers, TorchMatmul
from mistralrs_torch.ops import Device
from mistralrs_torch.system import SystemSnapshot
from mistralrs_torch_metal._manifest import METAL

MPS_PRIORITY = 100


def mps_dtypes() -> tuple[str, ...]:
    """What MPS computes in: float64 never; bfloat16 from macOS 14."""
    bf16 = torch.backends.mps.is_macos_or_newer(14, 0) if torch.backends.mps.is_available() else False
    return ("float32", "float16", "bfloat16") if bf16 else ("float32", "float16")


def mps_devices(system: SystemSnapshot) -> tuple[Device, ...]:
    if not torch.backends.mps.is_available():
        return ()
    gpu = next((g for g in system.gpus if g.vendor in METAL.gpu.vendors), None) if METAL.gpu else None
    return (Device("mps", gpu.name if gpu else "Metal GPU", "metal", int(torch.mps.recommended_max_memory())),)


def mps_attention() -> TorchAttention:
    return TorchAttention("mps-attention", "metal", MPS_PRIORITY, "mps", mps_dtypes())


def mps_matmul() -> TorchMatmul:
    return TorchMatmul("mps-matmul", "metal", MPS_PRIORITY, "mps", mps_dtypes())


def mps_layers() -> TorchLayers:
    return TorchLayers("mps-layers", "metal", MPS_PRIORITY, "mps", mps_dtypes())
