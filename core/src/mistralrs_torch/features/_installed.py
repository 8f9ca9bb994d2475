"""What discovery found: plugins, the features they ship, and plugins quarantined; the built-in cpu feature.

These are data: the plugin manager (mistralrs_torch.plugins) builds them, resolution and doctor read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mistralrs_torch.features._manifest import OPS, FeatureManifest

#: The built-in generic CPU feature: always active at the lowest priority, so the framework works with no
#: plugin installed ("Generic CPU: no features needed"). Its plugin is mistralrs_torch.plugins' built-in one.
GENERIC_CPU = FeatureManifest(
    name="cpu",
    summary="Generic CPU (built in, no features needed)",
    distribution="mistralrs-torch",
    provides=OPS,
    selection_priority=-1000,
    paged_attention="opt-in",
    recommended_for=("generic-cpu",),
)


@dataclass(frozen=True)
class PluginInfo:
    """A plugin as discovery saw it: entry-point name, distribution and version, and its entry-point value."""

    name: str
    distribution: str
    version: str
    value: str


@dataclass(frozen=True)
class InstalledFeature:
    """A feature manifest together with the plugin that ships it."""

    manifest: FeatureManifest
    plugin: PluginInfo


@dataclass(frozen=True)
class BrokenPlugin:
    """A quarantined plugin: where it failed, the error, the features it had declared, and the fix."""

    plugin: PluginInfo
    stage: str
    error: str
    features: tuple[str, ...] = ()
    #: The plugin's own traceback, shown with --traceback or MISTRALRS_TRACEBACK=1 ("" when none was raised).
    traceback: str = field(default="", compare=False, repr=False)

    @property
    def fix(self) -> str:
        return (f"disable it with MISTRALRS_DISABLE_PLUGINS={self.plugin.name}, "
                f"or reinstall or uninstall {self.plugin.distribution}")
