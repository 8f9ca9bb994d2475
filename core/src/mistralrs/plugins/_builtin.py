"""The built-in generic CPU plugin, registered through the same hooks as any other.

It ships the "cpu" feature, always active at the lowest priority, so the
framework works with no plugin installed ("Generic CPU: no features needed").
"""

from __future__ import annotations

from mistralrs._hookspecs import hookimpl
from mistralrs.features import OPS, FeatureManifest

__all__ = ["GENERIC_CPU", "PLUGIN_NAME"]

PLUGIN_NAME = "builtin"
GENERIC_CPU = FeatureManifest(
    name="cpu",
    summary="Generic CPU (built in, no features needed)",
    distribution="mistralrs",
    provides=OPS,
    priority=-1000,
    recommended_for=("generic-cpu",),
)


@hookimpl
def mistralrs_features() -> tuple[FeatureManifest, ...]:
    return (GENERIC_CPU,)
