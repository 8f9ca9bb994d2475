"""The built-in generic CPU plugin, registered through the same hooks as any other.

It ships the "cpu" feature, always active at the lowest priority, so the
framework works with no plugin installed ("Generic CPU: no features needed").
Its backends (mistralrs_torch.generic) import torch only when a runtime binds them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mistralrs_torch._hookspecs import hookimpl
from mistralrs_torch.features import GENERIC_CPU, FeatureManifest

if TYPE_CHECKING:
    from mistralrs_torch.ops import AttentionBackend, CollectiveBackend, Device, LayerBackend, MatmulBackend
    from mistralrs_torch.system import SystemSnapshot

PLUGIN_NAME = "builtin"


@hookimpl
def mistralrs_features() -> tuple[FeatureManifest, ...]:
    return (GENERIC_CPU,)


@hookimpl
def mistralrs_devices(active: frozenset[str], system: SystemSnapshot) -> tuple[Device, ...]:
    from mistralrs_torch.ops import Device

    return (Device("cpu", system.cpu.model, GENERIC_CPU.name, system.memory_total),)


@hookimpl
def mistralrs_attention_backends(active: frozenset[str]) -> tuple[AttentionBackend, ...]:
    from mistralrs_torch.generic import CpuNativeAttention, GenericAttention

    # cpu-native-attention leaves dense attention out (None): contract_problem checks it.
    return (CpuNativeAttention(), GenericAttention())  # type: ignore[return-value]


@hookimpl
def mistralrs_matmul_backends(active: frozenset[str]) -> tuple[MatmulBackend, ...]:
    from mistralrs_torch.generic import CpuBlockQuantMatmul, GenericMatmul, TorchInt4Matmul

    # An op a backend leaves out is None, which a Protocol's method cannot say: contract_problem checks it.
    return (CpuBlockQuantMatmul(), TorchInt4Matmul(), GenericMatmul())  # type: ignore[return-value]


@hookimpl
def mistralrs_layer_backends(active: frozenset[str]) -> tuple[LayerBackend, ...]:
    from mistralrs_torch.generic import CpuNativeLayers, GenericLayers

    return (CpuNativeLayers(), GenericLayers())


@hookimpl
def mistralrs_collective_backends(active: frozenset[str]) -> tuple[CollectiveBackend, ...]:
    from mistralrs_torch.generic import SingleProcessCollectives

    return (SingleProcessCollectives(),)
