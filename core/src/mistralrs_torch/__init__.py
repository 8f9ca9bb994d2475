"""mistralrs-torch: pluggable hardware backends for LLM inference.

The core defines the plugin contract (hooks, feature manifests, the op
contract), discovers plugins through entry points, probes the system and
resolves which features are active. Importing it imports no torch.
"""

from typing import TYPE_CHECKING

from mistralrs_torch._errors import (
    CollectiveError,
    ConfigError,
    ContextLengthError,
    FallbackError,
    InputError,
    KVCacheFullError,
    ManifestError,
    MistralrsError,
    ModelLoadError,
    OpInputError,
    PluginAPIVersionError,
    PluginError,
    Problem,
    SelectionError,
    SystemProfileError,
    UnsupportedCallError,
)
from mistralrs_torch._hookspecs import hookimpl, hookspec
from mistralrs_torch._version import PLUGIN_API_VERSION, __version__
from mistralrs_torch.features import (
    AutoCondition,
    BrokenPlugin,
    ConfigField,
    EnvVar,
    FeatureManifest,
    GPURequirement,
    InstalledFeature,
    LibraryRequirement,
    ModuleRequirement,
    PluginInfo,
)
from mistralrs_torch.plugins import PluginManager
from mistralrs_torch.resolution import FeatureStatus, Resolution, Selection, read_selection, resolve
from mistralrs_torch.system import GPU, SystemSnapshot, load_system, probe_system

if TYPE_CHECKING:
    from mistralrs_torch.ops import (
        AttentionBackend,
        CallSpec,
        CheckResult,
        CollectiveBackend,
        Communicator,
        Device,
        LayerBackend,
        MatmulBackend,
        PreparedWeight,
        QuantizedWeight,
        Support,
        kernel_for,
    )
    from mistralrs_torch.runtime import Runtime

# The op contract is needed only when a runtime binds backends; importing it lazily keeps
# `mistralrs plugins list` start-up short (see benchmarks/startup.py).
_LAZY = {name: "mistralrs_torch.ops" for name in (
    "AttentionBackend", "CallSpec", "CheckResult", "CollectiveBackend", "Communicator", "Device", "LayerBackend",
    "MatmulBackend", "PreparedWeight", "QuantizedWeight", "Support", "kernel_for")}
_LAZY["Runtime"] = "mistralrs_torch.runtime"  # imports torch


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mistralrs_torch' has no attribute {name!r}")


__all__ = [
    "GPU",
    "PLUGIN_API_VERSION",
    "AttentionBackend",
    "AutoCondition",
    "BrokenPlugin",
    "CallSpec",
    "CheckResult",
    "CollectiveBackend",
    "CollectiveError",
    "Communicator",
    "ConfigError",
    "ConfigField",
    "ContextLengthError",
    "Device",
    "EnvVar",
    "FallbackError",
    "FeatureManifest",
    "FeatureStatus",
    "GPURequirement",
    "InputError",
    "InstalledFeature",
    "KVCacheFullError",
    "LayerBackend",
    "LibraryRequirement",
    "ManifestError",
    "MatmulBackend",
    "MistralrsError",
    "ModelLoadError",
    "ModuleRequirement",
    "OpInputError",
    "PluginAPIVersionError",
    "PluginError",
    "PluginInfo",
    "PluginManager",
    "PreparedWeight",
    "Problem",
    "QuantizedWeight",
    "Resolution",
    "Runtime",
    "Selection",
    "SelectionError",
    "Support",
    "SystemProfileError",
    "SystemSnapshot",
    "UnsupportedCallError",
    "__version__",
    "hookimpl",
    "hookspec",
    "kernel_for",
    "load_system",
    "probe_system",
    "read_selection",
    "resolve",
]
