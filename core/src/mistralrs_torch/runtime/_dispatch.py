"""Per-op dispatch: the first backend that supports a call signature wins, chosen once and cached.

Choosing happens on the first call of each signature; later calls of that
signature are one dict lookup and a direct call. Every fallback (a preferred
backend refused, a lower one took the call) is recorded, and is an error
under MISTRALRS_NO_FALLBACK=1.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from mistralrs_torch._errors import FallbackError, UnsupportedCallError
from mistralrs_torch.ops import CallSpec

__all__ = ["Binding", "Dispatcher", "kernel"]


def kernel(backend: Any, method: str, call: CallSpec) -> Callable[..., Any]:
    """What the runtime calls for ``call`` on ``backend``: its kernel_for(call) if it specialises, else its method."""
    specialise = getattr(backend, "kernel_for", None)
    return (specialise(call) if specialise is not None else None) or getattr(backend, method)


@dataclass(frozen=True)
class Binding:
    """The outcome of choosing a backend for one call signature."""

    op: str
    call: CallSpec
    chosen: str
    #: (backend, its feature, why it refused), for each backend tried before the chosen one.
    skipped: tuple[tuple[str, str, str], ...]

    @property
    def is_fallback(self) -> bool:
        return bool(self.skipped)

    def describe(self) -> str:
        call = f"{self.call.dtype} on {self.call.device}, head size {self.call.head_size}, mask {self.call.mask}" \
            if self.call.head_size else f"{self.call.dtype} on {self.call.device}"
        # What else tells this signature from its neighbours (a flag by its name when set, a number with its value).
        extra = [name if value is True else f"{name} {value}" for name, value in self.call.extra.items()
                 if value is not False]
        call = ", ".join([call, *extra])
        skipped = "; ".join(f"{name} ({feature}) refused: {reason}" for name, feature, reason in self.skipped)
        return f"{self.op} [{call}] -> {self.chosen}" + (f" (fallback: {skipped})" if skipped else "")


class Dispatcher:
    """Chooses among ``backends`` (highest priority first) for one op, calling ``method`` on the winner."""

    def __init__(self, op: str, backends: Sequence[Any], method: str, no_fallback: bool) -> None:
        self.op = op
        # A backend that does not implement this op at all sets the method to None: it is not a
        # candidate, so passing it over is not a fallback.
        self.backends = tuple(b for b in backends if callable(getattr(b, method, None)))
        self.method = method
        self.no_fallback = no_fallback
        self.cache: dict[Hashable, Callable[..., Any]] = {}
        self.bindings: list[Binding] = []

    def bind(self, key: Hashable, call: CallSpec) -> Callable[..., Any]:
        """Choose the backend for ``call``, cache its bound method under ``key`` and return it."""
        skipped: list[tuple[str, str, str]] = []
        for backend in self.backends:
            support = backend.supports(call)
            if not support.ok:
                skipped.append((backend.name, backend.feature, support.reason or "no reason given"))
                continue
            binding = Binding(self.op, call, backend.name, tuple(skipped))
            if skipped and self.no_fallback:
                name, feature, reason = skipped[0]
                raise FallbackError(
                    f"{self.op}: backend {name} ({feature}) refused the call ({reason}) and {backend.name} would "
                    f"take it; MISTRALRS_NO_FALLBACK=1 forbids that: change the call (dtype, head size, device) "
                    f"or unset MISTRALRS_NO_FALLBACK")
            self.bindings.append(binding)
            function = kernel(backend, self.method, call)
            self.cache[key] = function
            return function
        reasons = "; ".join(f"{name} ({feature}): {reason}" for name, feature, reason in skipped) or "no backend is bound"
        raise UnsupportedCallError(f"no {self.op} backend supports {call.dtype} on {call.device}"
                                   f"{f', head size {call.head_size}' if call.head_size else ''}: {reasons}")
