"""Entry point of mistralrs-mkl: registers the mkl feature. Imports no torch."""

from __future__ import annotations

from mistralrs import FeatureManifest, hookimpl
from mistralrs_mkl._manifest import MKL


@hookimpl
def mistralrs_features() -> tuple[FeatureManifest, ...]:
    return (MKL,)
