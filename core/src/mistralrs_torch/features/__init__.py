"""Feature manifests: what a plugin declares about each feature it ships."""

from mistralrs_torch.features._catalogue import SeedPackage, seed_packages
from mistralrs_torch.features._manifest import (
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
    "SeedPackage",
    "seed_packages",
]
