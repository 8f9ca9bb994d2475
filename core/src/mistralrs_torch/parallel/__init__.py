"""Running one model over several devices or processes: rendezvous, communicator, device map, tensor parallelism.

- :mod:`._variables`, :mod:`._rendezvous` (no torch): where ranks meet (torchrun variables) and the finite timeouts.
- :mod:`._communicator`: collectives on torch.distributed, for the collective plugins to build on.
- :mod:`._device_map` (no torch): the layer-to-device map when one process drives several devices.
- :mod:`._sharding`: which slice of each weight a rank holds (whole attention heads, uncut quantization groups).
- :mod:`._tensor_parallel`: column- and row-parallel linear layers loaded as per-rank slices.
- :mod:`._launcher` (no torch): what `mistralrs launch` runs.

The communicator, the device map and the tensor-parallel layers are imported on first use, so that the light
parts never pull in torch or the op contract (plugins read the rendezvous helpers from their doctor checks);
type checkers see them through the ``TYPE_CHECKING`` imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mistralrs_torch.parallel._rendezvous import (
    MAX_WORLD_SIZE,
    TORCHRUN_VARS,
    Rendezvous,
    Timeouts,
    collective_timeouts,
    is_loopback,
    is_power_of_two,
    is_wildcard,
    launched_ranks_here,
    local_rank,
    torchrun_rendezvous,
    valid_host,
)
from mistralrs_torch.parallel._variables import (
    COLLECTIVE_ENV_VARS,
    COLLECTIVE_TIMEOUT_VAR,
    DEFAULT_TIMEOUT,
    RENDEZVOUS_TIMEOUT_VAR,
)

if TYPE_CHECKING:
    from mistralrs_torch.parallel._communicator import TorchDistributedCommunicator
    from mistralrs_torch.parallel._device_map import (
        DEVICE_LAYERS_VAR,
        DeviceMap,
        auto_device_map,
        device_map_entries,
        device_mapping_mode,
        parse_device_map,
        plan_device_map,
    )
    from mistralrs_torch.parallel._sharding import (
        AttentionHeads,
        HeadShard,
        column_slice,
        row_slice,
        shard_range,
        slice_weight,
    )
    from mistralrs_torch.parallel._tensor_parallel import (
        ColumnParallelLinear,
        ParallelMLP,
        RowParallelLinear,
        load_replicated,
        load_shard,
        rank_device,
        tensor_shapes,
    )

_LAZY = {
    "TorchDistributedCommunicator": "_communicator",
    **dict.fromkeys(("DEVICE_LAYERS_VAR", "DeviceMap", "auto_device_map", "device_map_entries", "device_mapping_mode",
                     "parse_device_map", "plan_device_map"), "_device_map"),
    **dict.fromkeys(("ColumnParallelLinear", "ParallelMLP", "RowParallelLinear", "load_replicated", "load_shard",
                     "rank_device", "tensor_shapes"), "_tensor_parallel"),
    **dict.fromkeys(("AttentionHeads", "HeadShard", "column_slice", "row_slice", "shard_range", "slice_weight"),
                    "_sharding"),
}

__all__ = [
    "COLLECTIVE_ENV_VARS",
    "COLLECTIVE_TIMEOUT_VAR",
    "DEFAULT_TIMEOUT",
    "DEVICE_LAYERS_VAR",
    "MAX_WORLD_SIZE",
    "RENDEZVOUS_TIMEOUT_VAR",
    "TORCHRUN_VARS",
    "AttentionHeads",
    "ColumnParallelLinear",
    "DeviceMap",
    "HeadShard",
    "ParallelMLP",
    "Rendezvous",
    "RowParallelLinear",
    "Timeouts",
    "TorchDistributedCommunicator",
    "auto_device_map",
    "collective_timeouts",
    "column_slice",
    "device_map_entries",
    "device_mapping_mode",
    "is_loopback",
    "is_power_of_two",
    "is_wildcard",
    "launched_ranks_here",
    "load_replicated",
    "load_shard",
    "local_rank",
    "parse_device_map",
    "plan_device_map",
    "rank_device",
    "row_slice",
    "shard_range",
    "slice_weight",
    "tensor_shapes",
    "torchrun_rendezvous",
    "valid_host",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"mistralrs_torch.parallel.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mistralrs_torch.parallel' has no attribute {name!r}")
