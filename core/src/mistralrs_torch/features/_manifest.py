"""Feature manifests: the frozen data a plugin declares for each feature it ships.

Reading a manifest imports no torch and no vendor library. Every rule of the
feature table (requires, auto-enables, excludes, platforms, hardware) is data
here and is evaluated generically by :mod:`mistralrs_torch.resolution`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from mistralrs_torch._errors import ManifestError
from mistralrs_torch._version import PLUGIN_API_VERSION

__all__ = [
    "OPS",
    "PLATFORMS",
    "AutoCondition",
    "ConfigField",
    "EnvVar",
    "FeatureManifest",
    "GPURequirement",
    "LibraryRequirement",
    "ModuleRequirement",
]

#: Operating systems, as :attr:`mistralrs_torch.system.SystemSnapshot.os` names them.
PLATFORMS = ("linux", "windows", "macos")
#: The kinds of backend work a feature can provide: a device, and the backends of each kind of op.
OPS = ("device", "attention", "matmul", "layers", "collectives")
PLATFORM_LABELS = {"linux": "Linux", "windows": "Windows", "macos": "macOS"}
GPU_VENDOR_LABELS = {"nvidia": "NVIDIA", "apple": "Apple", "amd": "AMD"}
GPU_VENDORS = tuple(GPU_VENDOR_LABELS)
_FEATURE_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


@dataclass(frozen=True)
class GPURequirement:
    """GPUs a feature needs: a vendor (or several), how many, and a compute-capability window."""

    vendor: str
    min_count: int = 1
    min_compute_capability: tuple[int, int] | None = None
    #: Exclusive upper bound: (10, 0) means "9.x only".
    below_compute_capability: tuple[int, int] | None = None
    #: What to do on a GPU newer than the window allows (e.g. "use flash-attn").
    newer_gpu_fix: str = ""
    #: GPUs of these vendors count too (metal: the AMD GPU Metal drives in an Intel Mac).
    other_vendors: tuple[str, ...] = ()
    #: The number of GPUs used must be a power of two (1, 2, 4, 8, ...).
    power_of_two: bool = False
    #: Variables that say how many of the visible GPUs are used, the first one set wins (all when none is).
    count_vars: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for vendor in (self.vendor, *self.other_vendors):
            _check(vendor in GPU_VENDORS, f"gpu vendor {vendor!r} is not one of {GPU_VENDORS}")
        _check(_is_str_tuple(self.count_vars) and all(_ENV_NAME.match(v) for v in self.count_vars),
               f"gpu count_vars {self.count_vars!r} must be a tuple of UPPER_CASE variable names")
        _check(isinstance(self.min_count, int) and self.min_count >= 0, "gpu min_count must be an int >= 0")
        for cc in (self.min_compute_capability, self.below_compute_capability):
            _check(cc is None or _is_cc(cc), f"compute capability {cc!r} must be a (major, minor) pair of ints")

    @property
    def vendors(self) -> tuple[str, ...]:
        return (self.vendor, *self.other_vendors)

    @property
    def label(self) -> str:
        """The GPUs in words: "NVIDIA GPU", "Apple or AMD GPU"."""
        return f"{' or '.join(GPU_VENDOR_LABELS[v] for v in self.vendors)} GPU"


@dataclass(frozen=True)
class LibraryRequirement:
    """A library fact of the system snapshot (``SystemSnapshot.libraries[name]``) that must be present."""

    name: str
    #: Says what is missing, in the seed's voice: "MKL not found".
    missing: str
    #: Says how to get it: "install Intel oneAPI or standalone MKL".
    fix: str
    #: The library's name as doctor prints it ("cuDNN"); the fact's name when empty.
    label: str = ""

    def __post_init__(self) -> None:
        _check(bool(self.name) and bool(self.missing) and bool(self.fix), "library requirements need name, missing and fix")


@dataclass(frozen=True)
class ModuleRequirement:
    """An importable Python module (found without importing it) and how to install it."""

    module: str
    distribution: str
    install: str

    def __post_init__(self) -> None:
        _check(bool(self.module) and bool(self.distribution) and bool(self.install), "module requirements need module, distribution and install")


@dataclass(frozen=True)
class ConfigField:
    """One field of the configuration file a variable points to (RING_CONFIG's JSON object), for the docs."""

    name: str
    description: str
    required: bool = True

    def __post_init__(self) -> None:
        _check(bool(self.name) and bool(self.description), "configuration fields need a name and a description")


@dataclass(frozen=True)
class EnvVar:
    """An environment variable a feature reads, for doctor's unknown-variable check and the docs."""

    name: str
    description: str
    #: When the variable names a configuration file: the fields that file holds.
    fields: tuple[ConfigField, ...] = ()

    def __post_init__(self) -> None:
        _check(bool(_ENV_NAME.match(self.name)), f"environment variable name {self.name!r} is not UPPER_CASE")
        _check(all(isinstance(f, ConfigField) for f in self.fields), f"{self.name}: fields must be ConfigField")


@dataclass(frozen=True)
class AutoCondition:
    """Extra conditions for auto mode only; an explicit selection ignores them."""

    #: Auto mode activates the feature only when one of these variables is set.
    env_set: tuple[str, ...] = ()
    #: Auto mode activates the feature only when it would use at least this many GPUs.
    min_gpus: int = 0


@dataclass(frozen=True)
class FeatureManifest:
    """One feature of a plugin: its rules, what it provides and how to get it.

    ``requires`` must be active too; ``auto_enables`` are added when this feature
    is selected; ``excludes`` cannot be active at the same time (declare both
    sides). Among features that exclude each other auto mode keeps the higher
    ``selection_priority`` (which also picks the default device: the highest feature's). ``disabled_by`` names variables that switch the feature off
    when set to a true value (``MISTRALRS_NO_NCCL=1``).
    """

    name: str
    summary: str
    distribution: str
    requires: tuple[str, ...] = ()
    auto_enables: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    #: Operating systems it runs on; empty means every platform (ring, the generic CPU).
    platforms: tuple[str, ...] = ()
    cpu_archs: tuple[str, ...] = ()
    #: CPU instruction-set flags that must all be present, as the snapshot names them ("avx2", "avx512f").
    cpu_flags: tuple[str, ...] = ()
    gpu: GPURequirement | None = None
    libraries: tuple[LibraryRequirement, ...] = ()
    modules: tuple[ModuleRequirement, ...] = ()
    disabled_by: tuple[str, ...] = ()
    auto: AutoCondition = AutoCondition()
    selection_priority: int = 0
    #: Hardware on which this feature wins an exclusion ("Hopper"), for messages.
    preferred_on: str = ""
    provides: tuple[str, ...] = ()
    #: "default" (on unless disabled), "opt-in" (--paged-attn), or "" (not provided).
    paged_attention: str = ""
    env_vars: tuple[EnvVar, ...] = ()
    #: Hardware classes (see ``mistralrs_torch.system.HARDWARE_CLASSES``) this feature is recommended for.
    recommended_for: tuple[str, ...] = ()
    #: Notes keyed by CPU vendor ("amd": "works on AMD but Intel-optimized").
    cpu_vendor_notes: Mapping[str, str] = field(default_factory=dict, hash=False)
    #: How to get a feature this one requires when no installed plugin provides it.
    install_hints: Mapping[str, str] = field(default_factory=dict, hash=False)
    #: Rules the plugin enforces itself (at bind time and in its doctor checks), in words, for the docs:
    #: "world_size must be a power of two (2, 4, 8, ...)".
    rules: tuple[str, ...] = ()
    api_version: str = PLUGIN_API_VERSION

    def __post_init__(self) -> None:
        _check(isinstance(self.name, str) and bool(_FEATURE_NAME.match(self.name)),
               f"feature name {self.name!r} must be lower-case words joined by '-' (like 'my-feature')")
        _check(isinstance(self.summary, str) and bool(self.summary), f"feature {self.name!r} needs a summary")
        _check(isinstance(self.distribution, str) and bool(self.distribution), f"feature {self.name!r} needs its distribution name")
        for attr in ("requires", "auto_enables", "excludes"):
            names = getattr(self, attr)
            _check(_is_str_tuple(names), f"feature {self.name!r}: {attr} must be a tuple of feature names")
            _check(self.name not in names, f"feature {self.name!r} lists itself in {attr}")
        _check(set(self.auto_enables) <= set(self.requires),
               f"feature {self.name!r}: auto_enables {sorted(set(self.auto_enables) - set(self.requires))} must also be in "
               "requires (a feature this one turns on is one it needs): add them to requires")
        # "cpu" is the built-in generic backend, active in every resolution: nothing may exclude it.
        _check("cpu" not in self.excludes, f"feature {self.name!r} excludes the built-in cpu feature, which is always "
                                           "active: remove it from excludes")
        _check(_is_str_tuple(self.platforms) and set(self.platforms) <= set(PLATFORMS),
               f"feature {self.name!r}: platforms {self.platforms!r} must be a tuple from {PLATFORMS} (empty: all)")
        _check(_is_str_tuple(self.cpu_archs), f"feature {self.name!r}: cpu_archs must be a tuple of names (x86_64, arm64)")
        _check(_is_str_tuple(self.cpu_flags) and all(f == f.lower() and f for f in self.cpu_flags),
               f"feature {self.name!r}: cpu_flags {self.cpu_flags!r} must be a tuple of lower-case flag names (avx2)")
        _check(_is_str_tuple(self.provides) and set(self.provides) <= set(OPS),
               f"feature {self.name!r}: provides {self.provides!r} must be a tuple from {OPS}")
        _check(self.paged_attention in ("", "default", "opt-in"),
               f"feature {self.name!r}: paged_attention {self.paged_attention!r} must be '', 'default' or 'opt-in'")
        _check(self.gpu is None or isinstance(self.gpu, GPURequirement), f"feature {self.name!r}: gpu must be a GPURequirement")
        _check(isinstance(self.auto, AutoCondition), f"feature {self.name!r}: auto must be an AutoCondition")
        _check(isinstance(self.selection_priority, int) and not isinstance(self.selection_priority, bool),
               f"feature {self.name!r}: selection_priority must be an int")
        _check(all(isinstance(r, LibraryRequirement) for r in self.libraries), f"feature {self.name!r}: libraries must be LibraryRequirement")
        _check(all(isinstance(r, ModuleRequirement) for r in self.modules), f"feature {self.name!r}: modules must be ModuleRequirement")
        _check(all(isinstance(v, EnvVar) for v in self.env_vars), f"feature {self.name!r}: env_vars must be EnvVar")
        _check(_is_str_tuple(self.rules), f"feature {self.name!r}: rules must be a tuple of sentences")
        _check(isinstance(self.api_version, str), f"feature {self.name!r}: api_version must be a string like '1.0'")
        object.__setattr__(self, "cpu_vendor_notes", MappingProxyType(dict(self.cpu_vendor_notes)))
        object.__setattr__(self, "install_hints", MappingProxyType(dict(self.install_hints)))

    @property
    def platform_label(self) -> str:
        """The platforms in words: "Linux, Windows" ("all" when unrestricted)."""
        return ", ".join(PLATFORM_LABELS[p] for p in self.platforms) or "all"

    def env_var_names(self) -> tuple[str, ...]:
        """Every variable this feature reads or is switched by."""
        return tuple(dict.fromkeys([v.name for v in self.env_vars] + list(self.disabled_by) + list(self.auto.env_set)))


def _is_cc(value: object) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value)


def _is_str_tuple(value: object) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, str) for v in value)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ManifestError(f"malformed feature manifest: {message}")
