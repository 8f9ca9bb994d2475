"""The op contract: the types backends implement and the runtime binds.

A backend has a ``name`` (shown in explain, doctor and the kit, and naming the
backend that prepared a weight, so make it unique), the ``feature`` of your
plugin it serves (a backend for a feature that is not the plugin's own or not
active gets the plugin quarantined), a ``dispatch_priority``, a ``supports``
method, and one method per op of its kind that it implements. Collective
backends have ``communicator(environ)`` instead of ``supports`` and op methods.

- ``dispatch_priority`` (an int) orders the backends of one kind, from every
  active feature, higher first; the generic CPU backends are -1000. It decides
  which backend is asked first for a call, not which features are active (that
  is the manifest's ``selection_priority``).
- ``supports(call)`` answers for one :class:`CallSpec` with a :class:`Support`:
  ``Support(True)`` claims the call, ``Support(False, reason)`` refuses it. It
  must never raise; it refuses, with a reason, every call it cannot run,
  including a dtype it does not know (the kit asks for int8 activations, which
  no backend runs); and it answers from the call alone, because the runtime asks
  once per call signature and caches the choice. A refusal without a reason, a
  raising ``supports`` and a claimed call that raises or misses the reference
  all fail the kit; doctor verifies every claimed smoke case.
- A refused call goes to the next backend that claims it. That fallback is
  recorded (explain, doctor) and is an error under MISTRALRS_NO_FALLBACK=1.
- An op the backend does not implement at all (say, paged attention) has its
  method set to None or left out: the backend is then no candidate for that op,
  and the next backend taking the call is not a fallback. A backend implements
  at least one op of its kind.
- ``kernel_for(call) -> callable | None`` (optional) hands the runtime a kernel
  specialised for one call signature at bind time (None: use the op's method),
  so the hot path needs no branching.

These are typing contracts only (no torch import here). Which ops a kind has,
their arguments and layouts, is the op registry's
(:mod:`mistralrs_torch.ops._registry`); docs/plugin-api.md is generated from both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from mistralrs_torch._errors import Problem

if TYPE_CHECKING:
    import torch

    from mistralrs_torch.ops._quantized import PreparedWeight, QuantizedWeight


@dataclass(frozen=True)
class Device:
    """A device a plugin can drive: ``torch_device`` is what torch calls it ("cuda:0", "mps", "cpu")."""

    torch_device: str
    name: str
    feature: str
    memory_total: int = 0
    memory_free: int | None = None


class CallSpec(NamedTuple):
    """The signature of one op call: what a backend judges support on and the runtime caches its choice by.

    Hashable and immutable. Only the fields an op's registry entry names in its
    ``signature`` are set for that op; the others keep their defaults. Each
    field's meaning is in :data:`CALLSPEC_FIELDS`.
    """

    op: str
    dtype: str
    device: str
    head_size: int = 0
    mask: str = "none"
    gqa: bool = False
    aligned: bool = True
    block_size: int = 0
    in_features: int = 0
    bits: int = 0
    group_size: int = 0
    symmetric: bool = True
    out_features: int = 0
    rows: int = 0

    def describe(self) -> str:
        """The signature in words: the dtype and device, then every field that is set."""
        words = [f"{self.dtype} on {self.device}"]
        defaults = CallSpec._field_defaults
        for name in self._fields[3:]:
            value = getattr(self, name)
            if value == defaults[name] and name != "symmetric":
                continue
            if name == "symmetric":
                if self.bits:
                    words.append("symmetric" if value else "asymmetric")
            elif value is True:
                words.append(name)
            elif value is False:
                words.append(f"not {name}")
            else:
                words.append(f"{name.replace('_', ' ')} {value}")
        return ", ".join(words)


#: What each CallSpec field means, the one place docs/plugin-api.md reads it from.
CALLSPEC_FIELDS: dict[str, str] = {
    "op": "The op's name: the registry entry and the backend method.",
    "dtype": 'torch dtype name of the activations: "float32", "bfloat16", "float16" or "float64" (the kit also '
             'asks for "int8", which every backend must refuse).',
    "device": 'torch device type: "cpu", "cuda", "mps".',
    "head_size": "Attention and rotary head size.",
    "mask": 'Attention mask kind: "none", "causal", "bool", "float", "causal+bool" or "causal+float".',
    "gqa": "Fewer key/value heads than query heads.",
    "aligned": "Query and keys of one length (a top-left causal kernel is right only then).",
    "block_size": "Paged KV cache block size.",
    "in_features": "Input features of the weight (linear, int8 and group-wise quantized linear).",
    "bits": "Bits of a group-wise quantized weight (4 or 8).",
    "group_size": "Input columns sharing one scale in a group-wise quantized weight.",
    "symmetric": "Group-wise quantized weight without offsets.",
    "out_features": "Output features of the weight (linear, int8 and group-wise quantized linear): with "
                    "in_features, the weight shape a backend's speed depends on.",
    "rows": "Tokens in the call rounded up to a power of two; set only under measured selection, which times the "
            "backends once per such bucket (so decode steps do not tune again); 0 otherwise.",
}


@dataclass(frozen=True)
class Support:
    """A backend's answer for one call: supported, or not with the reason."""

    ok: bool
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class CheckResult(Problem):
    """One doctor check: a :class:`~mistralrs_torch.Problem` whose subject is the check's name, with a status.

    ``status`` is "ok", "info", "warning" or "error" (an ok or info result usually has no ``fix``); ``plugin``
    names the plugin that made the check ("" for the core's own). Built as
    ``CheckResult("nvcc", "nvcc is not on PATH", "install the CUDA toolkit", status="info")``.
    """

    status: str
    plugin: str = ""

    def to_json(self) -> dict[str, str]:
        """The check as doctor's JSON writes it (schema mistralrs.doctor/1)."""
        return {"name": self.subject, "status": self.status, "message": self.message, "fix": self.fix,
                "plugin": self.plugin}


@runtime_checkable
class AttentionBackend(Protocol):
    """Dense and paged attention, and writes into the paged KV cache (ops of kind "attention")."""

    name: str
    feature: str
    dispatch_priority: int

    def supports(self, call: CallSpec) -> Support: ...

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                  mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor: ...

    def paged_attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        block_table: torch.Tensor, seq_lens: torch.Tensor, *,
                        scale: float | None = None) -> torch.Tensor: ...

    def write_kv_cache(self, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                       slot_mapping: torch.Tensor) -> None: ...


@runtime_checkable
class MatmulBackend(Protocol):
    """Dense linear, weight-only int8 linear and group-wise quantized linear (ops of kind "matmul")."""

    name: str
    feature: str
    dispatch_priority: int

    def supports(self, call: CallSpec) -> Support: ...

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor: ...

    def int8_linear(self, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                    bias: torch.Tensor | None = None) -> torch.Tensor: ...

    def prepare_quantized(self, weight: QuantizedWeight, call: CallSpec, device: str) -> Any: ...

    def quantized_linear(self, x: torch.Tensor, weight: PreparedWeight,
                         bias: torch.Tensor | None = None) -> torch.Tensor: ...


@runtime_checkable
class LayerBackend(Protocol):
    """Normalisation and position embedding (ops of kind "layers")."""

    name: str
    feature: str
    dispatch_priority: int

    def supports(self, call: CallSpec) -> Support: ...

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor: ...

    def rotary_embedding(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                         inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class Communicator(Protocol):
    """Collectives among the ranks of one job."""

    rank: int
    world_size: int

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor: ...

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]: ...

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor: ...

    def barrier(self) -> None: ...


@runtime_checkable
class CollectiveBackend(Protocol):
    """Creates the communicator of this process from its configuration."""

    name: str
    feature: str
    dispatch_priority: int

    def communicator(self, environ: Mapping[str, str]) -> Communicator: ...


#: The backend protocol of each kind of backend work.
BACKEND_PROTOCOLS: dict[str, type] = {"attention": AttentionBackend, "matmul": MatmulBackend,
                                      "layers": LayerBackend, "collectives": CollectiveBackend}


def op_methods(kind: type) -> tuple[str, ...]:
    """The op methods a backend of protocol ``kind`` may implement, from the op registry."""
    from mistralrs_torch.ops._registry import OPS

    if kind is CollectiveBackend:
        return ("communicator",)
    name = next((k for k, p in BACKEND_PROTOCOLS.items() if p is kind), "")
    return tuple(op.name for op in OPS if op.kind == name)


def contract_problem(item: object, kind: type) -> str:
    """What keeps ``item`` from being a ``kind`` ("" when nothing): backends need their identity (name,
    feature, an int dispatch_priority), ``supports`` (but collective backends) and at least one op method."""
    label = f"{type(item).__name__}"
    if kind not in BACKEND_PROTOCOLS.values():
        return "" if isinstance(item, kind) else f"{label} is not a {kind.__name__}"
    required = ("name", "feature", "dispatch_priority") + (() if kind is CollectiveBackend else ("supports",))
    missing = [a for a in required if not hasattr(item, a)]
    if missing:
        hint = (" (plugin API 1.x called it priority: see "
                "docs/writing-a-plugin.md#migrating-from-plugin-api-1x)"
                if "dispatch_priority" in missing and hasattr(item, "priority") else "")
        return f"{label} has no {', '.join(missing)}{hint}"
    priority = getattr(item, "dispatch_priority", None)
    if not isinstance(priority, int):
        return f"{label}.dispatch_priority is {priority!r}, not an int"
    if not all(callable(getattr(item, a)) for a in required[3:]):
        return f"{label}.supports is not callable"
    methods: list[Callable[..., Any] | None] = [getattr(item, op, None) for op in op_methods(kind)]
    if not all(m is None or callable(m) for m in methods) or not any(callable(m) for m in methods):
        return f"{label} implements none of {', '.join(op_methods(kind))} (each a method, or None when not implemented)"
    return ""


def conforms(item: object, kind: type) -> bool:
    """Whether ``item`` is a ``kind`` (see :func:`contract_problem`)."""
    return not contract_problem(item, kind)


def kernel_for(backend: Any, op: str, call: CallSpec) -> Callable[..., Any]:
    """What runs ``call`` on ``backend``: its ``kernel_for(call)`` when it specialises, else its ``op`` method."""
    specialise = getattr(backend, "kernel_for", None)
    kernel: Callable[..., Any] = (specialise(call) if specialise is not None else None) or getattr(backend, op)
    return kernel
