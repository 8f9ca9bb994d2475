"""Entry point of mistralrs-ring: registers the ring feature. Imports no torch."""

from __future__ import annotations

from mistralrs import FeatureManifest, hookimpl
from mistralrs_ring._manifest import RING


@hookimpl
def mistralrs_features() -> tuple[FeatureManifest, ...]:
    return (RING,)
