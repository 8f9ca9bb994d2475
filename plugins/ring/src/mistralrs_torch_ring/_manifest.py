"""The ring feature manifest (data only)."""

from __future__ import annotations

from mistralrs_torch import AutoCondition, EnvVar, FeatureManifest
from mistralrs_torch.parallel._variables import COLLECTIVE_ENV_VARS

__all__ = ["RING"]

RING = FeatureManifest(
    name="ring",
    summary="Multi-GPU/node (TCP ring)",
    distribution="mistralrs-torch-ring",
    excludes=("nccl",),
    auto=AutoCondition(env_set=("RING_CONFIG",)),
    selection_priority=20,
    provides=("collectives",),
    env_vars=(EnvVar("RING_CONFIG", "path to this process's ring JSON configuration"), *COLLECTIVE_ENV_VARS),
    recommended_for=("multi-node",),
)
