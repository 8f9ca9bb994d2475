"""Entry point of mistralrs-cuda: registers the cuda and cudnn features. Imports no torch."""

from __future__ import annotations

from mistralrs import FeatureManifest, hookimpl
from mistralrs_cuda._manifest import CUDA, CUDNN


@hookimpl
def mistralrs_features() -> tuple[FeatureManifest, ...]:
    return (CUDA, CUDNN)
