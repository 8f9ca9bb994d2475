"""The runtime: the resolved active set bound to a device and, per op of the registry, an ordered list of backends.

Hooks run once, here, when the runtime is built; an op call (``runtime.attention(...)``,
``runtime.linear(...)``, one attribute per registry entry) is a cache lookup keyed on its
signature and a direct call of the chosen backend's kernel.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from mistralrs_torch._errors import ConfigError, OpInputError, UnsupportedCallError
from mistralrs_torch.features import BrokenPlugin
from mistralrs_torch.ops import (
    BACKEND_KINDS,
    BACKEND_PROTOCOLS,
    OPS,
    AttentionBackend,
    CallSpec,
    CollectiveBackend,
    Communicator,
    Device,
    LayerBackend,
    MatmulBackend,
    PreparedWeight,
    QuantizedWeight,
)
from mistralrs_torch.ops._signatures import dtype_name, quantized_weight_check
from mistralrs_torch.parallel._rendezvous import local_rank, torchrun_rendezvous
from mistralrs_torch.plugins import PluginManager
from mistralrs_torch.resolution import Resolution, read_selection, resolve
from mistralrs_torch.runtime._dispatch import Binding, Dispatcher
from mistralrs_torch.runtime._loading import TensorSlice, load_safetensors
from mistralrs_torch.runtime._measure import SELECTIONS, Tuner, TuningCache, default_cache_path
from mistralrs_torch.system import SystemSnapshot
from mistralrs_torch.validation import env_flag, shown


def _default_device(devices: tuple[Device, ...], environ: Mapping[str, str]) -> Device:
    """The first device of the highest-priority feature; a launched rank (LOCAL_RANK) takes that feature's
    LOCAL_RANK-th device, so ranks sharing a machine's GPUs do not all load onto the first one."""
    same = [d for d in devices if d.feature == devices[0].feature]
    return same[local_rank(environ) % len(same)]


def _selection(selection: str | None, environ: Mapping[str, str]) -> str:
    source = "selection=" if selection is not None else "MISTRALRS_SELECTION="
    value = selection if selection is not None else (environ.get("MISTRALRS_SELECTION", "").strip() or "priority")
    if value not in SELECTIONS:
        raise ConfigError(f"{source}{shown(value)} is not a selection policy: choose one of {', '.join(SELECTIONS)}")
    return value


class Runtime:
    """Ops bound to the best backend of the active features.

    Build one with :meth:`create` (discovery, probing, selection and resolution
    in one call) or from an existing resolution and plugin manager. Every op of
    the registry is an attribute: ``runtime.attention(q, k, v, causal=True)``,
    ``runtime.linear(x, w)``, ...; see docs/plugin-api.md for each contract.
    """

    attention: Callable[..., torch.Tensor]
    paged_attention: Callable[..., torch.Tensor]
    write_kv_cache: Callable[..., None]
    rotary_embedding: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    rms_norm: Callable[..., torch.Tensor]
    linear: Callable[..., torch.Tensor]
    int8_linear: Callable[..., torch.Tensor]
    quantized_linear: Callable[..., torch.Tensor]

    def __init__(self, resolution: Resolution, manager: PluginManager, *, paged_attention: bool | None = None,
                 environ: Mapping[str, str] = os.environ, dry_run: bool = False, selection: str | None = None,
                 tuning_cache: str | Path | None = None) -> None:
        if paged_attention is not None and not isinstance(paged_attention, bool):
            raise ConfigError(f"paged_attention={paged_attention!r} must be True, False or None (the device's "
                              "default, or MISTRALRS_PAGED_ATTN)")
        if not isinstance(dry_run, bool):
            raise ConfigError(f"dry_run={dry_run!r} must be True or False")
        if not resolution.system.local and not dry_run:
            raise ConfigError(f"the selection was resolved for {resolution.system.source}, another machine than this "
                              "one: a runtime runs ops on this machine's hardware. Pass dry_run=True to only explain "
                              "what would be bound there (its ops then refuse to run), or resolve on this machine "
                              "(no system=)")
        #: Built for another machine's snapshot: explain() works, every op refuses to run.
        self.dry_run = dry_run
        self.resolution = resolution
        self.environ = environ
        active = frozenset(resolution.active)
        priority = {f.name: f.manifest.selection_priority for f in resolution.features if f.manifest is not None}
        broken_before = len(manager.broken)
        self.devices: tuple[Device, ...] = tuple(
            sorted(manager.collect("mistralrs_devices", Device, active, system=resolution.system),
                   key=lambda d: -priority.get(d.feature, 0)))
        backends: dict[str, tuple[Any, ...]] = {}
        for kind, hook in BACKEND_KINDS.items():
            found = manager.collect(hook, BACKEND_PROTOCOLS[kind], active,
                                    **({} if kind == "collectives" else {"system": resolution.system,
                                                                         "environ": environ}))
            # A backend's own dispatch priority orders dispatch (flash-attn above cuda's SDPA, generic last).
            backends[kind] = tuple(sorted(found, key=lambda b: -b.dispatch_priority))
        #: Plugins whose device or backend hook failed while this runtime was bound: their features are active
        #: but their work would run elsewhere, so explain() and doctor report them.
        self.broken: tuple[BrokenPlugin, ...] = manager.broken[broken_before:]
        if not self.devices:
            raise UnsupportedCallError("no active feature provides a device (the built-in cpu feature should): "
                                       "reinstall mistralrs-torch")
        self.device = _default_device(self.devices, environ)
        self.attention_backends: tuple[AttentionBackend, ...] = backends["attention"]
        self.matmul_backends: tuple[MatmulBackend, ...] = backends["matmul"]
        self.layer_backends: tuple[LayerBackend, ...] = backends["layers"]
        self.collective_backends: tuple[CollectiveBackend, ...] = backends["collectives"]
        device_manifest = next(f.manifest for f in resolution.features if f.name == self.device.feature)
        assert device_manifest is not None
        mode = device_manifest.paged_attention
        self.paged_attention_enabled = paged_attention if paged_attention is not None else (
            env_flag(environ, "MISTRALRS_PAGED_ATTN", default=mode == "default"))
        no_fallback = env_flag(environ, "MISTRALRS_NO_FALLBACK")
        read_values = env_flag(environ, "MISTRALRS_CHECK_INPUTS")
        self.selection = _selection(selection, environ)
        #: Measured selection's tuner, with its measurements and cache (None under priority selection).
        self.tuner = None if self.selection == "priority" else Tuner(TuningCache.load(
            Path(tuning_cache) if tuning_cache is not None else default_cache_path(environ),
            self._tuning_conditions(manager)))
        self._dispatchers = {op.name: Dispatcher(op, backends[op.kind], no_fallback=no_fallback,
                                                 read_values=read_values, tuner=self.tuner) for op in OPS}
        for name, dispatcher in self._dispatchers.items():
            setattr(self, name, dispatcher)  # the op is the dispatcher itself: no extra call on the hot path
        if not self.paged_attention_enabled:
            self.paged_attention = self._paged_attention_refused
        if dry_run:
            for name in self._dispatchers:
                setattr(self, name, self._dry_run_refused)
        self._communicator: Communicator | None = None

    def _tuning_conditions(self, manager: PluginManager) -> dict[str, Any]:
        """What makes a timing valid here: a measured choice is reused only while all of it holds."""
        return {"device": f"{self.device.torch_device} {self.device.name}", "torch": torch.__version__,
                "plugins": {p.distribution: p.version for p in manager.plugins}, "threads": torch.get_num_threads()}

    @classmethod
    def create(cls, features: str | None = None, *, system: SystemSnapshot | None = None,
               paged_attention: bool | None = None, environ: Mapping[str, str] | None = None,
               manager: PluginManager | None = None, dry_run: bool = False, selection: str | None = None,
               tuning_cache: str | Path | None = None) -> Runtime:
        """Discover plugins, resolve the selection in force (``features`` overrides it) and bind.

        ``system`` describing another machine (a profile, a --system file) needs ``dry_run=True``: such a runtime
        explains what would be bound there, and its ops refuse to run here. ``selection`` is "priority" (the
        first supporting backend in dispatch priority) or "measured" (the fastest correct one, timed per
        signature; see :mod:`mistralrs_torch.runtime._measure`), default MISTRALRS_SELECTION or "priority";
        ``tuning_cache`` is measured selection's file (default MISTRALRS_TUNING_CACHE or the user cache folder).
        """
        if features is not None and not isinstance(features, str):
            raise ConfigError(f"features={features!r} must be a string like 'cuda cudnn', 'auto' or 'none'")
        if system is not None and not isinstance(system, SystemSnapshot):
            raise ConfigError(f"system={system!r} must be a SystemSnapshot (mistralrs_torch.load_system(NAME_OR_FILE))")
        environ = os.environ if environ is None else environ
        manager = manager or PluginManager(environ=environ)
        snapshot = system or manager.probe_system()
        resolution = resolve(manager.features, manager.broken, read_selection(features, environ), snapshot, environ)
        return cls(resolution, manager, paged_attention=paged_attention, environ=environ, dry_run=dry_run,
                   selection=selection, tuning_cache=tuning_cache)

    def _dry_run_refused(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsupportedCallError(f"this runtime is a dry run for {self.resolution.system.source}: its ops do not run "
                                   "here; create one without system= (and dry_run) to run ops on this machine")

    def _paged_attention_refused(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise UnsupportedCallError(
            f"paged attention is opt-in on {self.device.feature}: create the runtime with "
            "Runtime.create(paged_attention=True), pass --paged-attn, or set MISTRALRS_PAGED_ATTN=1")

    def prepare_quantized(self, weight: QuantizedWeight, dtype: torch.dtype, *,
                          device: str | None = None) -> PreparedWeight:
        """Prepare a group-wise quantized weight once, at load, for activations of ``dtype`` on ``device``
        (default: the runtime's device).

        The backend that ``quantized_linear`` will run for this signature prepares it into its own layout; pass
        the result to every ``quantized_linear`` call.
        """
        quantized_weight_check(weight)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise OpInputError(f"prepare_quantized: dtype={dtype!r} must be a floating torch dtype (the activations')")
        target = device or self.device.torch_device
        in_features = weight.shape[1]
        call = CallSpec("quantized_linear", dtype_name(dtype), target.split(":")[0],
                        in_features=in_features, bits=weight.bits, group_size=weight.group_size,
                        symmetric=weight.symmetric, out_features=weight.shape[0])
        return self._dispatchers["quantized_linear"].prepare(weight, call, target)

    # -- devices and collectives ------------------------------------------------------------------

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` on the default device (a launched rank's own: see :attr:`device`)."""
        return tensor.to(self.device.torch_device)

    def load_safetensors(self, path: str | Path, *, names: list[str] | None = None,
                         slices: Mapping[str, TensorSlice] | None = None,
                         dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Load a safetensors file onto the default device, reading only ``slices`` of the tensors named there and
        casting floating-point tensors to ``dtype`` when given."""
        return load_safetensors(path, self.device.torch_device, names=names, slices=slices, dtype=dtype)

    def communicator(self) -> Communicator:
        """This process's communicator from the highest-priority collective backend (created once)."""
        if self._communicator is None:
            communicator = self.collective_backends[0].communicator(self.environ)
            launched = torchrun_rendezvous(self.environ)
            if communicator.world_size == 1 and launched is not None and launched.world_size > 1:
                # N ranks each running the whole model alone would be the silent failure we promise against.
                collective = sorted(
                    f.name for f in self.resolution.features
                    if f.manifest is not None and "collectives" in f.manifest.provides and f.name != "cpu")
                raise ConfigError(
                    f"WORLD_SIZE={launched.world_size} says this is rank {launched.rank} of a job, but no active "
                    f"feature provides collectives, so this rank would run alone: select one of "
                    f"{', '.join(collective) or 'the installed collective features (none installed)'} "
                    "(MISTRALRS_FEATURES, or `mistralrs launch --backend FEATURE`)"
                )
            self._communicator = communicator
        return self._communicator

    # -- explain ------------------------------------------------------------------------------------

    @property
    def bindings(self) -> tuple[Binding, ...]:
        """Every backend choice made so far, fallbacks included."""
        return tuple(b for d in self._dispatchers.values() for b in d.bindings)

    @property
    def fallbacks(self) -> tuple[Binding, ...]:
        """The choices where a preferred backend refused and a lower one took the call."""
        return tuple(b for b in self.bindings if b.is_fallback)

    def explain(self) -> dict[str, Any]:
        """Per op: backends in order, which one wins a representative call on the default device, why others don't."""
        from mistralrs_torch.runtime._explain import explain

        return explain(self)

    def dispatchers(self) -> Mapping[str, Dispatcher]:
        """The per-op dispatchers (for explain and doctor)."""
        return self._dispatchers
