"""The cuda and cudnn feature manifests (data only: no torch, no CUDA)."""

from __future__ import annotations

from mistralrs_torch import EnvVar, FeatureManifest, GPURequirement, LibraryRequirement

#: The wheels carrying the cuDNN torch loads, newest CUDA line first (the library fact "cudnn" is their version).
CUDNN_WHEELS = ("nvidia-cudnn-cu13", "nvidia-cudnn-cu12", "nvidia-cudnn-cu11")
_NVIDIA = ("nvidia-ampere", "nvidia-hopper", "nvidia-older", "multi-gpu-nvidia")

CUDA = FeatureManifest(
    name="cuda",
    summary="NVIDIA GPU acceleration",
    distribution="mistralrs-torch-cuda",
    excludes=("metal",),
    platforms=("linux", "windows"),
    gpu=GPURequirement(vendor="nvidia"),
    libraries=(LibraryRequirement(
        "cuda",
        missing="CUDA not found: torch was built without CUDA",
        fix="install a CUDA build of torch (on Linux x86_64, `pip install torch` from PyPI is one); "
            "nvcc is needed only to build kernels such as flash-attn"),),
    selection_priority=100,
    provides=("device", "attention", "matmul", "layers"),
    paged_attention="default",
    env_vars=(EnvVar("CUDA_VISIBLE_DEVICES", "which GPUs are visible, by index or UUID"),),
    recommended_for=_NVIDIA,
)

CUDNN = FeatureManifest(
    name="cudnn",
    summary="NVIDIA cuDNN backend",
    distribution="mistralrs-torch-cuda",
    requires=("cuda",),
    platforms=("linux", "windows"),
    libraries=(LibraryRequirement(
        "cudnn",
        missing="cuDNN not found",
        fix="install the cuDNN wheel matching torch's CUDA (pip install nvidia-cudnn-cu12, or -cu13) "
            "and a torch built with cuDNN",
        label="cuDNN"),),
    selection_priority=90,
    provides=("attention",),
    recommended_for=_NVIDIA,
)
