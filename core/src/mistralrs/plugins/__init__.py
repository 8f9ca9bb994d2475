"""Plugin discovery and the plugin manager."""

from mistralrs.plugins._builtin import GENERIC_CPU
from mistralrs.plugins._manager import ENTRY_POINT_GROUP, BrokenPlugin, InstalledFeature, PluginInfo, PluginManager

__all__ = ["ENTRY_POINT_GROUP", "GENERIC_CPU", "BrokenPlugin", "InstalledFeature", "PluginInfo", "PluginManager"]
