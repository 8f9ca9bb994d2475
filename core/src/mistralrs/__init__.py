"""mistralrs: pluggable hardware backends for LLM inference.

The core defines the plugin contract (hooks, feature manifests, the op
contract), discovers plugins through entry points, probes the system and
resolves which features are active. Importing it imports no torch.
"""

from mistralrs._errors import (
    ConfigError,
    ManifestError,
    MistralrsError,
    PluginAPIVersionError,
    PluginError,
    SelectionError,
    SystemProfileError,
    Violation,
)
from mistralrs._hookspecs import hookimpl, hookspec
from mistralrs._version import PLUGIN_API_VERSION, __version__
from mistralrs.features import (
    AutoCondition,
    EnvVar,
    FeatureManifest,
    GPURequirement,
    LibraryRequirement,
    ModuleRequirement,
)
from mistralrs.ops import (
    AttentionBackend,
    CallSpec,
    CheckResult,
    CollectiveBackend,
    Communicator,
    Device,
    MatmulBackend,
    Support,
)
from mistralrs.plugins import BrokenPlugin, InstalledFeature, PluginInfo, PluginManager
from mistralrs.resolution import FeatureStatus, Resolution, Selection, read_selection, resolve
from mistralrs.system import GPU, SystemSnapshot, load_system, probe_system

__all__ = [
    "GPU",
    "PLUGIN_API_VERSION",
    "AttentionBackend",
    "AutoCondition",
    "BrokenPlugin",
    "CallSpec",
    "CheckResult",
    "CollectiveBackend",
    "Communicator",
    "ConfigError",
    "Device",
    "EnvVar",
    "FeatureManifest",
    "FeatureStatus",
    "GPURequirement",
    "InstalledFeature",
    "LibraryRequirement",
    "ManifestError",
    "MatmulBackend",
    "MistralrsError",
    "ModuleRequirement",
    "PluginAPIVersionError",
    "PluginError",
    "PluginInfo",
    "PluginManager",
    "Resolution",
    "Selection",
    "SelectionError",
    "Support",
    "SystemProfileError",
    "SystemSnapshot",
    "Violation",
    "__version__",
    "hookimpl",
    "hookspec",
    "load_system",
    "probe_system",
    "read_selection",
    "resolve",
]
