"""Feature manifests: what a plugin declares about each feature it ships."""

from mistralrs_torch.features._catalogue import (
    Catalogue,
    CatalogueFeature,
    HardwareRow,
    SeedPackage,
    catalogue,
    seed_packages,
)
from mistralrs_torch.features._manifest import (
    OPS,
    PLATFORMS,
    AutoCondition,
    ConfigField,
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
    "Catalogue",
    "CatalogueFeature",
    "ConfigField",
    "EnvVar",
    "FeatureManifest",
    "GPURequirement",
    "HardwareRow",
    "LibraryRequirement",
    "ModuleRequirement",
    "SeedPackage",
    "catalogue",
    "seed_packages",
]
