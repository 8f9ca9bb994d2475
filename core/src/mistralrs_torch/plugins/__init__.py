"""Plugin discovery and the plugin manager."""

from mistralrs_torch.plugins._builtin import GENERIC_CPU
from mistralrs_torch.plugins._manager import (
    ENTRY_POINT_GROUP,
    BrokenPlugin,
    InstalledFeature,
    PluginInfo,
    PluginManager,
)

__all__ = ["ENTRY_POINT_GROUP", "GENERIC_CPU", "BrokenPlugin", "InstalledFeature", "PluginInfo", "PluginManager"]
