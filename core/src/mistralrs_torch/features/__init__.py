"""Feature manifests: what a plugin declares about each feature it ships; what discovery found installed."""

from mistralrs_torch.features._catalogue import (
    Catalogue,
    CatalogueFeature,
    HardwareRow,
    SeedPackage,
    catalogue,
    seed_packages,
)
from mistralrs_torch.features._installed import GENERIC_CPU, BrokenPlugin, InstalledFeature, PluginInfo
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
    "GENERIC_CPU",
    "OPS",
    "PLATFORMS",
    "AutoCondition",
    "BrokenPlugin",
    "Catalogue",
    "CatalogueFeature",
    "ConfigField",
    "EnvVar",
    "FeatureManifest",
    "GPURequirement",
    "HardwareRow",
    "InstalledFeature",
    "LibraryRequirement",
    "ModuleRequirement",
    "PluginInfo",
    "SeedPackage",
    "catalogue",
    "seed_packages",
]
