"""The ring feature manifest (data only)."""

from __future__ import annotations

from mistralrs_torch import AutoCondition, ConfigField, EnvVar, FeatureManifest
from mistralrs_torch.parallel import COLLECTIVE_ENV_VARS

#: The seed's RING_CONFIG format: one JSON object per process. What each field does here is in _config.
RING_CONFIG_FIELDS = (
    ConfigField("master_ip", "the address of rank 0, which hosts the rendezvous"),
    ConfigField("master_port", "the rendezvous port on rank 0's machine"),
    ConfigField("port", "this process's ring port"),
    ConfigField("right_port", "the ring port of the next rank"),
    ConfigField("right_ip", "the address of the next rank (default localhost)", required=False),
    ConfigField("rank", "this process's rank (0 to world_size-1)"),
    ConfigField("world_size", "the number of processes (a power of two, 2 or more)"),
)

RING = FeatureManifest(
    name="ring",
    summary="Multi-GPU/node (TCP ring)",
    distribution="mistralrs-torch-ring",
    excludes=("nccl",),
    auto=AutoCondition(env_set=("RING_CONFIG",)),
    selection_priority=20,
    provides=("collectives",),
    env_vars=(EnvVar("RING_CONFIG", "path to this process's ring JSON configuration", RING_CONFIG_FIELDS),
              *COLLECTIVE_ENV_VARS),
    rules=("World size must be a power of two, 2 or more (2, 4, 8, ...): RING_CONFIG's world_size, "
           "`mistralrs launch -n` and `mistralrs ring configs --world-size` refuse others.",
           "TCP ports must be open between the machines: master_port on rank 0's machine for the rendezvous, "
           "and the ports gloo picks for its connections between ranks."),
    recommended_for=("multi-node",),
)
