"""Entry point of mistralrs-torch-accelerate: registers the accelerate feature.

Imports no torch until a runtime binds it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from mistralrs_torch import FeatureManifest, SystemSnapshot, hookimpl
from mistralrs_torch_accelerate._manifest import ACCELERATE

if TYPE_CHECKING:
    from mistralrs_torch.ops import MatmulBackend


@hookimpl
def mistralrs_features() -> tuple[FeatureManifest, ...]:
    return (ACCELERATE,)


@hookimpl
def mistralrs_probe_system(system: SystemSnapshot) -> dict[str, str]:
    # The framework ships with macOS; its version is the system's.
    if system.os != "macos" or not os.path.exists("/System/Library/Frameworks/Accelerate.framework"):
        return {}
    import platform

    return {"accelerate": platform.mac_ver()[0]}


@hookimpl
def mistralrs_matmul_backends(active: frozenset[str]) -> tuple[MatmulBackend, ...]:
    if ACCELERATE.name not in active:
        return ()
    from mistralrs_torch_accelerate._backend import AccelerateMatmul

    return (AccelerateMatmul(),)
