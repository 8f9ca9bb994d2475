"""Entry point of mistralrs-torch-cuda: registers the cuda and cudnn features.

Imports no torch until a runtime binds them.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from mistralrs_torch import FeatureManifest, SystemSnapshot, hookimpl
from mistralrs_torch.system import installed_version
from mistralrs_torch_cuda._manifest import CUDA, CUDNN, CUDNN_WHEELS

if TYPE_CHECKING:
    from mistralrs_torch.ops import AttentionBackend, CheckResult, Device, LayerBackend, MatmulBackend


@hookimpl
def mistralrs_features() -> tuple[FeatureManifest, ...]:
    return (CUDA, CUDNN)


@hookimpl
def mistralrs_probe_system(system: SystemSnapshot) -> dict[str, str]:
    # torch loads the cuDNN of its CUDA line's wheel, and only when it was built with cuDNN.
    version = installed_version(*CUDNN_WHEELS) if system.torch is not None and system.torch.cudnn else None
    return {"cudnn": version} if version is not None else {}


@hookimpl
def mistralrs_devices(active: frozenset[str], system: SystemSnapshot) -> tuple[Device, ...]:
    if CUDA.name not in active:
        return ()
    from mistralrs_torch_cuda._devices import cuda_devices

    return cuda_devices(system)


@hookimpl
def mistralrs_attention_backends(active: frozenset[str]) -> tuple[AttentionBackend, ...]:
    if CUDA.name not in active:
        return ()
    from mistralrs_torch_cuda._backends import CudnnAttention, cuda_attention, torch_cudnn_check

    # No probing and no torch state here: the backends ask torch for the GPU's facts when they first
    # judge a call, and cuda-sdpa keeps torch off cuDNN only during its own calls when cudnn is not active.
    cudnn = CUDNN.name in active
    backends: list[AttentionBackend] = [cuda_attention(cudnn=cudnn)]
    if cudnn:
        # An op a backend leaves out is None, which a Protocol's method cannot say: contract_problem checks it.
        backends.append(CudnnAttention(check=torch_cudnn_check))  # type: ignore[arg-type]
    return tuple(backends)


@hookimpl
def mistralrs_matmul_backends(active: frozenset[str]) -> tuple[MatmulBackend, ...]:
    if CUDA.name not in active:
        return ()
    from mistralrs_torch_cuda._backends import cuda_matmul
    from mistralrs_torch_cuda._int4 import CudaInt4Matmul

    # An op a backend leaves out is None, which a Protocol's method cannot say: contract_problem checks it.
    return (CudaInt4Matmul(), cuda_matmul())  # type: ignore[return-value]


@hookimpl
def mistralrs_layer_backends(active: frozenset[str]) -> tuple[LayerBackend, ...]:
    if CUDA.name not in active:
        return ()
    from mistralrs_torch_cuda._backends import cuda_layers

    return (cuda_layers(),)


@hookimpl
def mistralrs_doctor_checks(
    active: frozenset[str], system: SystemSnapshot, environ: Mapping[str, str]
) -> tuple[CheckResult, ...]:
    from mistralrs_torch_cuda._checks import cuda_checks

    # torch is asked only when doctor already imported it (verification on) and only about this machine.
    torch = sys.modules.get("torch") if system.local else None
    return tuple(cuda_checks(active, system, environ, torch))
