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

#: Operating systems, as :attr:`mistralrs_torch.system.SystemSnapshot.os` names them.
PLATFORMS = ("linux", "windows", "macos")
#: The kinds of backend work a feature can provide: a device, and the backends of each kind of op.
OPS = ("device", "attention", "matmul", "layers", "collectives")
PLATFORM_LABELS = {"linux": "Linux", "windows": "Windows", "macos": "macOS"}
GPU_VENDOR_LABELS = {"nvidia": "NVIDIA", "apple": "Apple", "amd": "AMD"}
GPU_VENDORS = tuple(GPU_VENDOR_LABELS)
#: FeatureManifest.paged_attention values: not provided, on by default, opt-in.
PAGED_ATTENTION_MODES = ("", "default", "opt-in")
_FEATURE_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def _doc(text: str, choices: tuple[str, ...] = ()) -> dict[str, object]:
    """A field's metadata: its meaning (and allowed values), the one place docs/plugin-api.md reads them from."""
    return {"doc": text, "choices": choices}


@dataclass(frozen=True)
class GPURequirement:
    """GPUs a feature needs: a vendor (or several), how many, and a compute-capability window."""

    vendor: str = field(metadata=_doc("The GPUs' vendor.", GPU_VENDORS))
    min_count: int = field(default=1, metadata=_doc("How many GPUs of that vendor must be visible."))
    min_compute_capability: tuple[int, int] | None = field(default=None, metadata=_doc(
        "Lowest compute capability (major, minor) every visible GPU must have; None: any."))
    below_compute_capability: tuple[int, int] | None = field(default=None, metadata=_doc(
        'Exclusive upper bound of the compute capability: (10, 0) means "9.x only"; None: no bound.'))
    newer_gpu_fix: str = field(default="", metadata=_doc(
        'The fix printed for a GPU newer than the window allows ("use flash-attn"); empty: remove the feature.'))
    other_vendors: tuple[str, ...] = field(default=(), metadata=_doc(
        "GPUs of these vendors count too (metal: the AMD GPU that Metal drives in an Intel Mac).", GPU_VENDORS))
    power_of_two: bool = field(default=False, metadata=_doc(
        "The number of GPUs used must be a power of two (1, 2, 4, 8, ...), in auto and explicit mode alike."))
    count_vars: tuple[str, ...] = field(default=(), metadata=_doc(
        "Variables that say how many of the visible GPUs are used, the first one set winning (nccl: "
        "MISTRALRS_MN_LOCAL_WORLD_SIZE, then the launcher's LOCAL_WORLD_SIZE); none set: all visible ones."))

    def __post_init__(self) -> None:
        for vendor in (self.vendor, *self.other_vendors):
            _check(vendor in GPU_VENDORS, f"gpu vendor {vendor!r} is not one of {GPU_VENDORS}")
        _check(isinstance(self.min_count, int) and self.min_count >= 0, "gpu min_count must be an int >= 0")
        for cc in (self.min_compute_capability, self.below_compute_capability):
            _check(cc is None or _is_cc(cc), f"compute capability {cc!r} must be a (major, minor) pair of ints")
        _check(_is_str_tuple(self.count_vars) and all(_ENV_NAME.match(v) for v in self.count_vars),
               f"gpu count_vars {self.count_vars!r} must be a tuple of UPPER_CASE variable names")

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

    name: str = field(metadata=_doc(
        "The library fact that must be present: a key of ``SystemSnapshot.libraries`` (``mistralrs plugins system`` "
        "lists them; a plugin adds its own through ``mistralrs_probe_system``)."))
    missing: str = field(metadata=_doc('What is missing when it is absent, in the seed\'s voice: "MKL not found".'))
    fix: str = field(metadata=_doc('How to get it: "install Intel oneAPI or standalone MKL".'))
    label: str = field(default="", metadata=_doc(
        'The library\'s name as doctor prints it ("cuDNN"); empty: the fact\'s name.'))

    def __post_init__(self) -> None:
        _check(bool(self.name) and bool(self.missing) and bool(self.fix),
               "library requirements need name, missing and fix")


@dataclass(frozen=True)
class ModuleRequirement:
    """An importable Python module (found without importing it) and how to install it."""

    module: str = field(metadata=_doc("The module that must be importable, looked up without importing it."))
    distribution: str = field(metadata=_doc("The distribution that installs it, named in the message."))
    install: str = field(metadata=_doc("How to install it: the fix printed when it is missing."))

    def __post_init__(self) -> None:
        _check(bool(self.module) and bool(self.distribution) and bool(self.install),
               "module requirements need module, distribution and install")


@dataclass(frozen=True)
class ConfigField:
    """One field of the configuration file a variable points to (RING_CONFIG's JSON object), for the docs."""

    name: str = field(metadata=_doc("The field's name in the file."))
    description: str = field(metadata=_doc("What it holds, as docs/features.md prints it."))
    required: bool = field(default=True, metadata=_doc("Whether a file without it is malformed."))

    def __post_init__(self) -> None:
        _check(bool(self.name) and bool(self.description), "configuration fields need a name and a description")


@dataclass(frozen=True)
class EnvVar:
    """An environment variable a feature reads, for doctor's unknown-variable check and the docs."""

    name: str = field(metadata=_doc("The variable's UPPER_CASE name."))
    description: str = field(metadata=_doc("What it does, as docs/features.md prints it."))
    fields: tuple[ConfigField, ...] = field(default=(), metadata=_doc(
        "When the variable names a configuration file: the fields that file holds (docs/features.md tables them)."))

    def __post_init__(self) -> None:
        _check(bool(_ENV_NAME.match(self.name)), f"environment variable name {self.name!r} is not UPPER_CASE")
        _check(all(isinstance(f, ConfigField) for f in self.fields), f"{self.name}: fields must be ConfigField")


@dataclass(frozen=True)
class AutoCondition:
    """Extra conditions for auto mode only; an explicit selection ignores them."""

    env_set: tuple[str, ...] = field(default=(), metadata=_doc(
        "Auto mode activates the feature only when one of these variables is set (ring: RING_CONFIG)."))
    min_gpus: int = field(default=0, metadata=_doc(
        "Auto mode activates the feature only when it would use at least this many GPUs of its ``gpu`` "
        "requirement's vendors (all visible ones, or as many as its count_vars say; nccl: 2); 0: no condition."))


@dataclass(frozen=True)
class FeatureManifest:
    """One feature of a plugin: its rules, what it provides and how to get it.

    Each field's meaning is its ``doc`` metadata (docs/plugin-api.md prints them all).
    """

    name: str = field(metadata=_doc(
        "The feature's name: lower-case words joined by '-' (flash-attn), what --features and MISTRALRS_FEATURES "
        "take. Unique among installed plugins: a second plugin declaring it is quarantined."))
    summary: str = field(metadata=_doc("One line saying what it is, for list, doctor and the docs."))
    distribution: str = field(metadata=_doc(
        "The distribution that ships it (mistralrs-torch-<name>); the kit checks it registers the entry point."))
    requires: tuple[str, ...] = field(default=(), metadata=_doc(
        "Features that must be active too. A feature requiring one that cannot run here cannot run either; the kit "
        "fails a requirement no installed plugin provides."))
    auto_enables: tuple[str, ...] = field(default=(), metadata=_doc(
        "Features turned on with this one, whether it is selected or auto mode picks it (transitively); each must "
        "also be in requires."))
    excludes: tuple[str, ...] = field(default=(), metadata=_doc(
        "Features that cannot be active together with this one. One side declaring it is enough: resolution "
        "enforces it both ways. Auto mode keeps the one with the higher selection_priority; an explicit selection "
        "of both is an error. The built-in cpu feature cannot be excluded."))
    platforms: tuple[str, ...] = field(default=(), metadata=_doc(
        "Operating systems it runs on, as SystemSnapshot.os names them; empty: every platform.", PLATFORMS))
    cpu_archs: tuple[str, ...] = field(default=(), metadata=_doc(
        "CPU architectures it runs on, as SystemSnapshot.arch names them (x86_64, arm64); empty: any."))
    cpu_flags: tuple[str, ...] = field(default=(), metadata=_doc(
        "CPU instruction-set flags that must all be present, lower-case as the snapshot names them (avx2, "
        "avx512f); judged from the snapshot, so `--system` profiles are judged too."))
    gpu: GPURequirement | None = field(default=None, metadata=_doc("The GPUs it needs; None: no GPU."))
    libraries: tuple[LibraryRequirement, ...] = field(default=(), metadata=_doc(
        "Library facts of the system snapshot that must be present."))
    modules: tuple[ModuleRequirement, ...] = field(default=(), metadata=_doc(
        "Python modules that must be importable."))
    disabled_by: tuple[str, ...] = field(default=(), metadata=_doc(
        "Variables that switch the feature off when set to a true value (MISTRALRS_NO_NCCL=1); selecting it "
        "explicitly while one is set is an error."))
    auto: AutoCondition = field(default=AutoCondition(), metadata=_doc(
        "Extra conditions for auto mode only; an explicit selection ignores them."))
    selection_priority: int = field(default=0, metadata=_doc(
        "Decides which features are active: among features that exclude each other auto mode keeps the higher one "
        "(resolution considers features in this order, ties by name), and the default device is the first device "
        "of the highest feature that has one. It does not order backends: each backend's dispatch_priority does."))
    preferred_on: str = field(default="", metadata=_doc(
        'Hardware on which this feature wins an exclusion ("Hopper"), quoted in messages.'))
    provides: tuple[str, ...] = field(default=(), metadata=_doc(
        "The kinds of work it provides: a device (mistralrs_devices) and the backend kinds of the op registry. "
        "At least one; a backend kind the plugin then returns no backend for fails the kit and is a doctor "
        "warning.", OPS))
    paged_attention: str = field(default="", metadata=_doc(
        "For a device feature: paged attention on its device is on by default (\"default\"), opt-in with "
        "--paged-attn or MISTRALRS_PAGED_ATTN=1 (\"opt-in\"), or not provided (\"\").", PAGED_ATTENTION_MODES))
    env_vars: tuple[EnvVar, ...] = field(default=(), metadata=_doc(
        "Environment variables it reads: doctor does not flag them as unknown, docs/features.md lists them."))
    recommended_for: tuple[str, ...] = field(default=(), metadata=_doc(
        "Hardware classes it is recommended for (keys of mistralrs_torch.system.HARDWARE_CLASSES; the kit "
        "rejects others), for doctor's recommendation and docs/features.md."))
    cpu_vendor_notes: Mapping[str, str] = field(default_factory=dict, hash=False, metadata=_doc(
        'Notes keyed by CPU vendor, shown on that vendor\'s CPUs ("amd": "works on AMD but Intel-optimized").'))
    install_hints: Mapping[str, str] = field(default_factory=dict, hash=False, metadata=_doc(
        "How to get a feature this one requires when no installed plugin provides it (feature -> hint), quoted "
        "in resolution's messages."))
    rules: tuple[str, ...] = field(default=(), metadata=_doc(
        "Rules the plugin enforces itself (at bind time and in its doctor checks), in words, for docs/features.md: "
        '"World size must be a power of two, 2 or more (2, 4, 8, ...)".'))
    api_version: str = field(default=PLUGIN_API_VERSION, metadata=_doc(
        "The plugin API the manifest was written for, \"MAJOR.MINOR\" (default: this core's PLUGIN_API_VERSION); "
        "one this core does not support gets the plugin quarantined at discovery."))

    def __post_init__(self) -> None:
        _check(isinstance(self.name, str) and bool(_FEATURE_NAME.match(self.name)),
               f"feature name {self.name!r} must be lower-case words joined by '-' (like 'my-feature')")
        _check(isinstance(self.summary, str) and bool(self.summary), f"feature {self.name!r} needs a summary")
        _check(isinstance(self.distribution, str) and bool(self.distribution),
               f"feature {self.name!r} needs its distribution name")
        for attr in ("requires", "auto_enables", "excludes"):
            names = getattr(self, attr)
            _check(_is_str_tuple(names), f"feature {self.name!r}: {attr} must be a tuple of feature names")
            _check(self.name not in names, f"feature {self.name!r} lists itself in {attr}")
        _check(
            set(self.auto_enables) <= set(self.requires),
            f"feature {self.name!r}: auto_enables {sorted(set(self.auto_enables) - set(self.requires))} "
            "must also be in "
            "requires (a feature this one turns on is one it needs): add them to requires",
        )
        # "cpu" is the built-in generic backend, active in every resolution: nothing may exclude it.
        _check(
            "cpu" not in self.excludes,
            f"feature {self.name!r} excludes the built-in cpu feature, which is always active: remove it from excludes",
        )
        _check(
            _is_str_tuple(self.platforms) and set(self.platforms) <= set(PLATFORMS),
            f"feature {self.name!r}: platforms {self.platforms!r} must be a tuple from {PLATFORMS} (empty: all)",
        )
        _check(
            _is_str_tuple(self.cpu_archs), f"feature {self.name!r}: cpu_archs must be a tuple of names (x86_64, arm64)"
        )
        _check(
            _is_str_tuple(self.cpu_flags) and all(f == f.lower() and f for f in self.cpu_flags),
            f"feature {self.name!r}: cpu_flags {self.cpu_flags!r} must be a tuple of lower-case flag names (avx2)",
        )
        _check(
            _is_str_tuple(self.provides) and set(self.provides) <= set(OPS),
            f"feature {self.name!r}: provides {self.provides!r} must be a tuple from {OPS}",
        )
        _check(
            self.paged_attention in PAGED_ATTENTION_MODES,
            f"feature {self.name!r}: paged_attention {self.paged_attention!r} must be '', 'default' or 'opt-in'",
        )
        _check(
            self.gpu is None or isinstance(self.gpu, GPURequirement),
            f"feature {self.name!r}: gpu must be a GPURequirement",
        )
        _check(isinstance(self.auto, AutoCondition), f"feature {self.name!r}: auto must be an AutoCondition")
        _check(
            isinstance(self.selection_priority, int) and not isinstance(self.selection_priority, bool),
            f"feature {self.name!r}: selection_priority must be an int",
        )
        _check(
            all(isinstance(r, LibraryRequirement) for r in self.libraries),
            f"feature {self.name!r}: libraries must be LibraryRequirement",
        )
        _check(
            all(isinstance(r, ModuleRequirement) for r in self.modules),
            f"feature {self.name!r}: modules must be ModuleRequirement",
        )
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
