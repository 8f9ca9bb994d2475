"""The op contract: the types backends implement and the runtime binds.

These are typing contracts only (no torch import here). A backend declares the
calls it can run through ``supports``, which answers with a reason when it
cannot, so the runtime can fall through to the next backend visibly. Backends
are tried in order of their ``dispatch_priority`` (higher first; the generic
CPU backends are -1000). A backend may also define ``kernel_for(call) ->
callable | None`` to hand the runtime a kernel specialised for one call
signature at bind time (None: use the op's method), so its hot path needs no
branching. A backend that does not implement one of its kind's ops at all (say,
paged attention) sets that method to None or leaves it out: it is then no
candidate for that op, and the next backend taking the call is not a fallback.

Which ops a kind has, their arguments and layouts, is the op registry's
(:mod:`mistralrs_torch.ops._registry`); docs/plugin-api.md is generated from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from mistralrs_torch.ops._quantized import PreparedWeight, QuantizedWeight

__all__ = [
    "AttentionBackend",
    "CallSpec",
    "CheckResult",
    "CollectiveBackend",
    "Communicator",
    "Device",
    "LayerBackend",
    "MatmulBackend",
    "Support",
    "conforms",
    "kernel_for",
]


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
    ``signature`` are set for that op; the others keep their defaults.
    """

    op: str
    #: torch dtype name of the activations: "float32", "bfloat16", "float16", "float64".
    dtype: str
    #: torch device type: "cpu", "cuda", "mps".
    device: str
    #: Attention and rotary head size.
    head_size: int = 0
    #: "none", "causal", "bool", "float", "causal+bool" or "causal+float" (attention masks).
    mask: str = "none"
    #: Fewer key/value heads than query heads.
    gqa: bool = False
    #: Query and keys of one length (a top-left causal kernel is right only then).
    aligned: bool = True
    #: Paged KV cache block size.
    block_size: int = 0
    #: Input features of a quantized weight.
    in_features: int = 0
    #: Bits of a group-wise quantized weight (4 or 8).
    bits: int = 0
    #: Input columns sharing one scale in a group-wise quantized weight.
    group_size: int = 0
    #: Group-wise quantized weight without offsets.
    symmetric: bool = True

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


@dataclass(frozen=True)
class Support:
    """A backend's answer for one call: supported, or not with the reason."""

    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class CheckResult:
    """One doctor check: status is "ok", "info", "warning" or "error"; ``fix`` says what to do."""

    name: str
    status: str
    message: str
    fix: str = ""
    plugin: str = ""


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


def conforms(item: object, kind: type) -> bool:
    """Whether ``item`` is a ``kind``: backends need identity, ``supports`` and at least one op method."""
    if kind not in BACKEND_PROTOCOLS.values():
        return isinstance(item, kind)
    required = ("name", "feature", "dispatch_priority") + (() if kind is CollectiveBackend else ("supports",))
    methods: list[Callable[..., Any] | None] = [getattr(item, op, None) for op in op_methods(kind)]
    return (all(hasattr(item, a) for a in required) and isinstance(getattr(item, "dispatch_priority", None), int)
            and all(callable(getattr(item, a)) for a in required[3:])
            and all(m is None or callable(m) for m in methods) and any(callable(m) for m in methods))


def kernel_for(backend: Any, op: str, call: CallSpec) -> Callable[..., Any]:
    """What runs ``call`` on ``backend``: its ``kernel_for(call)`` when it specialises, else its ``op`` method."""
    specialise = getattr(backend, "kernel_for", None)
    return (specialise(call) if specialise is not None else None) or getattr(backend, op)
