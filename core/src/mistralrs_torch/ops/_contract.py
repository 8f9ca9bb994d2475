"""The op contract: the types backends implement and the runtime binds.

These are typing contracts only (no torch import here). A backend declares the
calls it can run through ``supports``, which answers with a reason when it
cannot, so the runtime can fall through to the next backend visibly. Backends
are tried in order of their ``priority`` (higher first; the generic CPU
backend is -1000). A backend may also define ``kernel_for(call) -> callable |
None`` to hand the runtime a kernel specialised for one call signature at bind
time (None: use the op's method), so its hot path needs no branching. A
backend that does not implement one of its protocol's ops at all (say, paged
attention) sets that method to None: it is then no candidate for that op, and
the next backend taking the call is not a fallback.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

__all__ = [
    "AttentionBackend",
    "CallSpec",
    "CheckResult",
    "CollectiveBackend",
    "Communicator",
    "Device",
    "MatmulBackend",
    "Support",
    "conforms",
]


@dataclass(frozen=True)
class Device:
    """A device a plugin can drive: ``torch_device`` is what torch calls it ("cuda:0", "mps", "cpu")."""

    torch_device: str
    name: str
    feature: str
    memory_total: int = 0
    memory_free: int | None = None


@dataclass(frozen=True)
class CallSpec:
    """The shape of one op call, as backends judge support and the runtime caches its choice."""

    op: str
    dtype: str
    device: str
    head_size: int = 0
    mask: str = "none"
    extra: Mapping[str, Any] = field(default_factory=dict)


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
    """Dense attention (batch, heads, sequence, head size) and paged decode attention."""

    name: str
    feature: str
    priority: int

    def supports(self, call: CallSpec) -> Support: ...

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                  mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor: ...

    def paged_attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        block_table: torch.Tensor, seq_lens: torch.Tensor, *, scale: float | None = None) -> torch.Tensor: ...


@runtime_checkable
class MatmulBackend(Protocol):
    """Dense matmul/linear and weight-only int8 linear with per-output-channel scales."""

    name: str
    feature: str
    priority: int

    def supports(self, call: CallSpec) -> Support: ...

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor: ...

    def int8_linear(self, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                    bias: torch.Tensor | None = None) -> torch.Tensor: ...


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
    priority: int

    def communicator(self, environ: Mapping[str, str]) -> Communicator: ...


#: Per backend protocol: the attributes every backend has, and its op methods (None: op not implemented).
_SHAPES: dict[type, tuple[tuple[str, ...], tuple[str, ...]]] = {
    AttentionBackend: (("name", "feature", "priority", "supports"), ("attention", "paged_attention")),
    MatmulBackend: (("name", "feature", "priority", "supports"), ("linear", "int8_linear")),
    CollectiveBackend: (("name", "feature", "priority"), ("communicator",)),
}


def conforms(item: object, kind: type) -> bool:
    """Whether ``item`` is a ``kind``: backends need every attribute and at least one op method, the others may be None."""
    if kind not in _SHAPES:
        return isinstance(item, kind)
    required, ops = _SHAPES[kind]
    methods = [getattr(item, op, None) for op in ops]
    return (all(hasattr(item, a) for a in required) and callable(getattr(item, "supports", len))
            and all(m is None or callable(m) for m in methods) and any(callable(m) for m in methods))
