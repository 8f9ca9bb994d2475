"""Feature manifests: what a plugin declares about each feature it ships."""

from mistralrs.features._manifest import (
    OPS,
    PLATFORMS,
    AutoCondition,
    EnvVar,
    FeatureManifest,
    GPURequirement,
    LibraryRequirement,
    ModuleRequirement,
)

__all__ = [
    "OPS",
    "PLATFORMS",
    "AutoCondition",
    "EnvVar",
    "FeatureManifest",
    "GPURequirement",
    "LibraryRequirement",
    "ModuleRequirement",
]
