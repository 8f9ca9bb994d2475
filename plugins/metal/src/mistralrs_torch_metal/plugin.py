"""Entry point of mistralrs-torch-metal: registers the metal feature. Imports no torch until a runtime binds it."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from mistralrs_torch import FeatureManifest, SystemSnapshot, hookimpl
from mistralrs_torch_metal._manifest import METAL

if TYPE_CHECKING:
    from mistralrs_torch.ops import AttentionBackend, CheckResult, Device, LayerBackend, MatmulBackend


@hookimpl
def mistralrs_features() -> tuple[FeatureManifest, ...]:
    return (METAL,)


@hookimpl
def mistralrs_devices(active: frozenset[str], system: SystemSnapshot) -> tuple[Device, ...]:
    if METAL.name not in active:
        return ()
    from mistralrs_torch_metal._backend import mps_devices

    return mps_devices(system)


@hookimpl
def mistralrs_attention_backends(active: frozenset[str]) -> tuple[AttentionBackend, ...]:
    if METAL.name not in active:
        return ()
    from mistralrs_torch_metal._backend import mps_attention

    return (mps_attention(),)


@hookimpl
def mistralrs_matmul_backends(active: frozenset[str]) -> tuple[MatmulBackend, ...]:
    if METAL.name not in active:
        return ()
    from mistralrs_torch_metal._backend import mps_matmul

    return (mps_matmul(),)


@hookimpl
def mistralrs_layer_backends(active: frozenset[str]) -> tuple[LayerBackend, ...]:
    if METAL.name not in active:
        return ()
    from mistralrs_torch_metal._backend import mps_layers

    return (mps_layers(),)


@hookimpl
def mistralrs_doctor_checks(active: frozenset[str], system: SystemSnapshot) -> tuple[CheckResult, ...]:
    if METAL.name not in active or not system.local or "torch" not in sys.modules:
        # MPS can only be asked through torch (doctor imports it when it verifies), and only here:
        # a loaded profile describes another machine.
        return ()
    import torch

    from mistralrs_torch.ops import CheckResult

    if torch.backends.mps.is_available():
        return (CheckResult("mps", "torch MPS is available", status="ok"),)
    reason = "torch was built without MPS" if not torch.backends.mps.is_built() else "this Mac has no usable Metal GPU"
    return (
        CheckResult(
            "mps",
            f"metal is active but {reason}",
            "install torch for macOS (pip install torch) on macOS 12.3+ with Apple Silicon or an AMD GPU",
            status="error",
        ),
    )
