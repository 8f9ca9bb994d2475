"""The runtime: the resolved active set bound to a device and, per op, an ordered list of backends.

Hooks run once, here, when the runtime is built; an op call is a cache
lookup keyed on its signature and a direct call of the chosen backend.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mistralrs_torch._errors import ConfigError, UnsupportedCallError
from mistralrs_torch._settings import env_flag
from mistralrs_torch.ops import AttentionBackend, CallSpec, CollectiveBackend, Communicator, Device, MatmulBackend
from mistralrs_torch.parallel._rendezvous import torchrun_rendezvous
from mistralrs_torch.plugins import PluginManager
from mistralrs_torch.resolution import Resolution, read_selection, resolve
from mistralrs_torch.runtime._dispatch import Binding, Dispatcher
from mistralrs_torch.runtime._loading import TensorSlice, load_safetensors
from mistralrs_torch.system import SystemSnapshot

__all__ = ["Runtime"]


def _dtype(t: torch.dtype) -> str:
    return str(t).removeprefix("torch.")


def _mask_kind(causal: bool, mask: torch.Tensor | None) -> str:
    kind = "none" if mask is None else "bool" if mask.dtype == torch.bool else "float"
    return ("causal+" + kind if kind != "none" else "causal") if causal else kind


def _default_device(devices: tuple[Device, ...], environ: Mapping[str, str]) -> Device:
    """The first device of the highest-priority feature; a launched rank (LOCAL_RANK) takes that feature's
    LOCAL_RANK-th device, so ranks sharing a machine's GPUs do not all load onto the first one."""
    raw = environ.get("LOCAL_RANK", "").strip()
    local_rank = int(raw) if raw.isdigit() else 0  # a bad value is the communicator's error to report
    same = [d for d in devices if d.feature == devices[0].feature]
    return same[local_rank % len(same)]


class Runtime:
    """Ops bound to the best backend of the active features.

    Build one with :meth:`create` (discovery, probing, selection and resolution
    in one call) or from an existing resolution and plugin manager.
    """

    def __init__(self, resolution: Resolution, manager: PluginManager, *, paged_attention: bool | None = None,
                 environ: Mapping[str, str] = os.environ) -> None:
        self.resolution = resolution
        self.environ = environ
        active = frozenset(resolution.active)
        priority = {f.name: f.manifest.priority for f in resolution.features if f.manifest is not None}

        def ordered(items: list[Any]) -> list[Any]:
            # A backend's own priority orders dispatch (flash-attn above cuda's SDPA, generic last).
            return sorted(items, key=lambda b: -b.priority)

        self.devices: tuple[Device, ...] = tuple(
            sorted(manager.collect("mistralrs_devices", Device, active, system=resolution.system),
                   key=lambda d: -priority.get(d.feature, 0)))
        if not self.devices:
            raise UnsupportedCallError("no active feature provides a device (the built-in cpu feature should): "
                                       "reinstall mistralrs-torch")
        self.device = _default_device(self.devices, environ)
        self.attention_backends: tuple[AttentionBackend, ...] = tuple(
            ordered(manager.collect("mistralrs_attention_backends", AttentionBackend, active, system=resolution.system,
                                    environ=environ)))
        self.matmul_backends: tuple[MatmulBackend, ...] = tuple(
            ordered(manager.collect("mistralrs_matmul_backends", MatmulBackend, active, system=resolution.system,
                                    environ=environ)))
        self.collective_backends: tuple[CollectiveBackend, ...] = tuple(
            ordered(manager.collect("mistralrs_collective_backends", CollectiveBackend, active)))
        device_manifest = next(f.manifest for f in resolution.features if f.name == self.device.feature)
        assert device_manifest is not None
        mode = device_manifest.paged_attention
        self.paged_attention_enabled = bool(paged_attention) if paged_attention is not None else (
            env_flag(environ, "MISTRALRS_PAGED_ATTN", default=mode == "default"))
        no_fallback = env_flag(environ, "MISTRALRS_NO_FALLBACK")
        self._dispatchers = {
            "attention": Dispatcher("attention", self.attention_backends, "attention", no_fallback),
            "paged_attention": Dispatcher("paged_attention", self.attention_backends, "paged_attention", no_fallback),
            "linear": Dispatcher("linear", self.matmul_backends, "linear", no_fallback),
            "int8_linear": Dispatcher("int8_linear", self.matmul_backends, "int8_linear", no_fallback),
        }
        # The caches themselves are attributes: one attribute load fewer per call.
        self._attention, self._attention_cache = self._dispatchers["attention"], self._dispatchers["attention"].cache
        self._paged, self._paged_cache = self._dispatchers["paged_attention"], self._dispatchers["paged_attention"].cache
        self._linear, self._linear_cache = self._dispatchers["linear"], self._dispatchers["linear"].cache
        self._int8, self._int8_cache = self._dispatchers["int8_linear"], self._dispatchers["int8_linear"].cache
        self._communicator: Communicator | None = None

    @classmethod
    def create(cls, features: str | None = None, *, system: SystemSnapshot | None = None,
               paged_attention: bool | None = None, environ: Mapping[str, str] | None = None,
               manager: PluginManager | None = None) -> Runtime:
        """Discover plugins, resolve the selection in force (``features`` overrides it) and bind."""
        environ = os.environ if environ is None else environ
        manager = manager or PluginManager(environ=environ)
        snapshot = system or manager.probe_system()
        resolution = resolve(manager.features, manager.broken, read_selection(features, environ), snapshot, environ)
        return cls(resolution, manager, paged_attention=paged_attention, environ=environ)

    # -- ops: the hot path is a dict lookup and a direct call -------------------------------------

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                  mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
        """Dense attention over (batch, heads, seq, head size); causal masks align bottom-right."""
        q_shape, k_shape = q.shape, k.shape
        # "aligned" (q_len == k_len) is part of the signature: kernels whose causal mask is
        # top-left (torch's flash and cuDNN SDPA) are right only when both alignments agree.
        key = (q.dtype, q.device, q_shape[-1], q_shape[1] == k_shape[1], q_shape[-2] == k_shape[-2], causal,
               None if mask is None else mask.dtype)
        function = self._attention_cache.get(key)
        if function is None:
            function = self._attention.bind(key, CallSpec("attention", _dtype(q.dtype), q.device.type, q_shape[-1],
                                                          _mask_kind(causal, mask),
                                                          {"gqa": q_shape[1] != k_shape[1],
                                                           "aligned": q_shape[-2] == k_shape[-2]}))
        return function(q, k, v, causal=causal, mask=mask, scale=scale)

    def paged_attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        block_table: torch.Tensor, seq_lens: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
        """Attention of q (batch, heads, q len, D) against a block-table KV cache (blocks, block size, kv heads, D)."""
        if not self.paged_attention_enabled:
            raise UnsupportedCallError(
                f"paged attention is opt-in on {self.device.feature}: create the runtime with "
                "Runtime.create(paged_attention=True), or pass --paged-attn or set MISTRALRS_PAGED_ATTN=1")
        key = (q.dtype, q.device, q.shape[-1], k_cache.shape[1], q.shape[1] == k_cache.shape[2])
        function = self._paged_cache.get(key)
        if function is None:
            function = self._paged.bind(key, CallSpec("paged_attention", _dtype(q.dtype), q.device.type, q.shape[-1],
                                                      "causal", {"block_size": k_cache.shape[1],
                                                                 "gqa": q.shape[1] != k_cache.shape[2]}))
        return function(q, k_cache, v_cache, block_table, seq_lens, scale=scale)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x @ weight.T + bias, weight of shape (out, in)."""
        key = (x.dtype, x.device)
        function = self._linear_cache.get(key)
        if function is None:
            function = self._linear.bind(key, CallSpec("linear", _dtype(x.dtype), x.device.type))
        return function(x, weight, bias)

    def int8_linear(self, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
        """x @ (weight * scale[:, None]).T + bias for an int8 weight (out, in) with one scale per output channel."""
        key = (x.dtype, x.device, weight.shape[1])
        function = self._int8_cache.get(key)
        if function is None:
            function = self._int8.bind(key, CallSpec("int8_linear", _dtype(x.dtype), x.device.type,
                                                     extra={"in_features": weight.shape[1]}))
        return function(x, weight, scale, bias)

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
                collective = sorted(f.name for f in self.resolution.features
                                    if f.manifest is not None and "collectives" in f.manifest.provides and f.name != "cpu")
                raise ConfigError(
                    f"WORLD_SIZE={launched.world_size} says this is rank {launched.rank} of a job, but no active "
                    f"feature provides collectives, so this rank would run alone: select one of "
                    f"{', '.join(collective) or 'the installed collective features (none installed)'} "
                    "(MISTRALRS_FEATURES, or `mistralrs launch --backend FEATURE`)")
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
        """Per op: backends in order, which one wins a representative call on the default device and why others are skipped."""
        from mistralrs_torch.runtime._explain import explain

        return explain(self)

    def dispatchers(self) -> Mapping[str, Dispatcher]:
        """The per-op dispatchers (for explain and doctor)."""
        return self._dispatchers
