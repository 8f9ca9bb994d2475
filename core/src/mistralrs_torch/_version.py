"""Versions: the distribution's, and the plugin API it offers to plugins."""

from __future__ import annotations

__version__ = "0.1.0"

#: The plugin API this core implements. A plugin written for API X.Y loads when X
#: equals our major and Y is not newer than our minor.
PLUGIN_API_VERSION = "2.0"


def supports_api_version(version: str) -> bool:
    """Whether a plugin written for plugin API ``version`` ("MAJOR.MINOR") can load here."""
    try:
        major, minor = (int(part) for part in version.split("."))
    except ValueError:
        return False
    ours_major, ours_minor = (int(part) for part in PLUGIN_API_VERSION.split("."))
    return major == ours_major and 0 <= minor <= ours_minor
