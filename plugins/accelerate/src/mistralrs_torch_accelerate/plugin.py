"""Entry point of mistralrs-torch-accelerate: registers the accelerate feature. Imports no torch until a runtime binds it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mistralrs_torch import FeatureManifest, hookimpl
from mistralrs_torch_accelerate._manifest import ACCELERATE

if TYPE_CHECKING:
    from mistralrs_torch.ops import MatmulBackend


@hookimpl
def mistralrs_features() -> tuple[FeatureManifest, ...]:
    return (ACCELERATE,)


@hookimpl
def mistralrs_matmul_backends(active: frozenset[str]) -> tuple[MatmulBackend, ...]:
    if ACCELERATE.name not in active:
        return ()
    from mistralrs_torch_accelerate._backend import AccelerateMatmul

    return (AccelerateMatmul(),)
