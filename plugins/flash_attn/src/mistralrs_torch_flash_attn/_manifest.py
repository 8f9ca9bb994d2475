"""The flash-attn and flash-attn-v3 feature manifests (data only)."""

from __future__ import annotations

from mistralrs_torch import FeatureManifest, GPURequirement, ModuleRequirement

#: flash-attn compiles CUDA code at install time, so it is never a declared dependency.
INSTALL_FLASH_ATTN = "pip install flash-attn --no-build-isolation"
INSTALL_FLASH_ATTN_3 = ("git clone https://github.com/Dao-AILab/flash-attention && "
                        "cd flash-attention/hopper && python setup.py install")
_NEEDS_CUDA = {"cuda": "pip install mistralrs-torch-cuda"}

FLASH_ATTN = FeatureManifest(
    name="flash-attn",
    summary="FlashAttention V2",
    distribution="mistralrs-torch-flash-attn",
    requires=("cuda",),
    auto_enables=("cuda",),
    excludes=("flash-attn-v3",),
    platforms=("linux", "windows"),
    gpu=GPURequirement(vendor="nvidia", min_compute_capability=(8, 0)),
    selection_priority=50,
    provides=("attention",),
    recommended_for=("nvidia-ampere", "multi-gpu-nvidia"),
    install_hints=_NEEDS_CUDA,
)

FLASH_ATTN_V3 = FeatureManifest(
    name="flash-attn-v3",
    summary="FlashAttention V3",
    distribution="mistralrs-torch-flash-attn",
    requires=("cuda",),
    auto_enables=("cuda",),
    excludes=("flash-attn",),
    platforms=("linux", "windows"),
    gpu=GPURequirement(vendor="nvidia", min_compute_capability=(9, 0), below_compute_capability=(10, 0),
                       newer_gpu_fix="FlashAttention-3 kernels are Hopper-only: use flash-attn on this GPU"),
    modules=(ModuleRequirement("flash_attn_interface", "flash_attn_3", INSTALL_FLASH_ATTN_3),),
    selection_priority=60,
    preferred_on="Hopper",
    provides=("attention",),
    recommended_for=("nvidia-hopper",),
    install_hints=_NEEDS_CUDA,
)
