"""Entry point of mistralrs-nccl: registers the nccl feature. Imports no torch."""

from __future__ import annotations

from mistralrs import FeatureManifest, hookimpl
from mistralrs_nccl._manifest import NCCL


@hookimpl
def mistralrs_features() -> tuple[FeatureManifest, ...]:
    return (NCCL,)
