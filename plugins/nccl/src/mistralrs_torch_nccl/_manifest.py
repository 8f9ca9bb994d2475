"""The nccl feature manifest (data only)."""

from __future__ import annotations

from mistralrs_torch import AutoCondition, EnvVar, FeatureManifest, GPURequirement, LibraryRequirement
from mistralrs_torch.parallel import COLLECTIVE_ENV_VARS

LOCAL_WORLD_SIZE_VAR = "MISTRALRS_MN_LOCAL_WORLD_SIZE"

#: The wheels carrying the NCCL torch loads, newest CUDA line first (the library fact "nccl" is their version).
NCCL_WHEELS = ("nvidia-nccl-cu13", "nvidia-nccl-cu12", "nvidia-nccl-cu11")

NCCL = FeatureManifest(
    name="nccl",
    summary="Multi-GPU (NVIDIA NCCL)",
    distribution="mistralrs-torch-nccl",
    requires=("cuda",),
    auto_enables=("cuda",),
    excludes=("ring",),
    platforms=("linux",),
    # One process per GPU; a launcher's LOCAL_WORLD_SIZE says how many run here when ours is unset.
    gpu=GPURequirement(vendor="nvidia", power_of_two=True, count_vars=(LOCAL_WORLD_SIZE_VAR, "LOCAL_WORLD_SIZE")),
    libraries=(LibraryRequirement("nccl", missing="NCCL not found",
                                  fix="install the NCCL wheel matching torch's CUDA "
                                      "(pip install nvidia-nccl-cu12, or -cu13)", label="NCCL"),),
    disabled_by=("MISTRALRS_NO_NCCL",),
    auto=AutoCondition(min_gpus=2),
    selection_priority=10,
    provides=("collectives",),
    env_vars=(EnvVar(LOCAL_WORLD_SIZE_VAR, "number of GPUs to use (defaults to all; a power of two)"),
              EnvVar("MISTRALRS_NO_NCCL", "1 disables NCCL and uses device mapping instead"),
              *COLLECTIVE_ENV_VARS),
    recommended_for=("multi-gpu-nvidia",),
    rules=("World size must be a power of two (1, 2, 4, 8, ...): nccl runs only when the GPUs it uses (all visible "
           f"ones, or {LOCAL_WORLD_SIZE_VAR} of them) are a power of two in number.",
           "When NCCL is enabled, automatic device mapping is disabled, and so is an explicit MISTRALRS_DEVICE_LAYERS "
           "map: each process holds one GPU. MISTRALRS_NO_NCCL=1 turns NCCL off and device mapping back on."),
)
