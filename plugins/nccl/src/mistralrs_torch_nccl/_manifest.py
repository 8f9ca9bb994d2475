"""The nccl feature manifest (data only)."""

from __future__ import annotations

from mistralrs_torch import AutoCondition, EnvVar, FeatureManifest, GPURequirement, LibraryRequirement
from mistralrs_torch.parallel._variables import COLLECTIVE_ENV_VARS

__all__ = ["NCCL"]

NCCL = FeatureManifest(
    name="nccl",
    summary="Multi-GPU (NVIDIA NCCL)",
    distribution="mistralrs-torch-nccl",
    requires=("cuda",),
    auto_enables=("cuda",),
    excludes=("ring",),
    platforms=("linux",),
    gpu=GPURequirement(vendor="nvidia"),
    libraries=(LibraryRequirement("nccl", missing="NCCL not found",
                                  fix="install the NCCL wheel matching torch's CUDA (pip install nvidia-nccl-cu12, or -cu13)"),),
    disabled_by=("MISTRALRS_NO_NCCL",),
    auto=AutoCondition(min_gpus=2),
    selection_priority=10,
    provides=("collectives",),
    env_vars=(EnvVar("MISTRALRS_MN_LOCAL_WORLD_SIZE", "number of GPUs to use (defaults to all; a power of two)"),
              EnvVar("MISTRALRS_NO_NCCL", "1 disables NCCL and uses device mapping instead"),
              *COLLECTIVE_ENV_VARS),
    recommended_for=("multi-gpu-nvidia",),
)
