"""Plugin discovery and the plugin manager (the data it builds, such as InstalledFeature, is in features)."""

from mistralrs_torch.plugins._manager import ENTRY_POINT_GROUP, PluginManager

__all__ = ["ENTRY_POINT_GROUP", "PluginManager"]
