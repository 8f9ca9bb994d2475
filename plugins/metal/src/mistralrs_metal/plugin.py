"""Entry point of mistralrs-metal: registers the metal feature. Imports no torch."""

from __future__ import annotations

from mistralrs import FeatureManifest, hookimpl
from mistralrs_metal._manifest import METAL


@hookimpl
def mistralrs_features() -> tuple[FeatureManifest, ...]:
    return (METAL,)
