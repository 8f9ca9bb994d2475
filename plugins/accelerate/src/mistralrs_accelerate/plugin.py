"""Entry point of mistralrs-accelerate: registers the accelerate feature. Imports no torch."""

from __future__ import annotations

from mistralrs import FeatureManifest, hookimpl
from mistralrs_accelerate._manifest import ACCELERATE


@hookimpl
def mistralrs_features() -> tuple[FeatureManifest, ...]:
    return (ACCELERATE,)
