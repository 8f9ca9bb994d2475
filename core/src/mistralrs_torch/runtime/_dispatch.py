"""Per-op dispatch: the first backend that supports a call signature wins, chosen once and cached.

A :class:`Dispatcher` is what ``runtime.<op>`` is. A call computes the op's
cheap key (tensor metadata that stays the same across decode steps) and looks
it up; the first call of a signature checks its arguments against the
contract, builds its CallSpec, chooses a backend (recording every fallback,
an error under MISTRALRS_NO_FALLBACK=1) and caches the kernel under the key.
Later calls are one dict lookup and a direct call, plus the op's per-call
guard where it has one. An exception a kernel raises is checked against the
contract once more, so a bad argument is reported by name, not as a deep
torch error.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from mistralrs_torch._errors import FallbackError, MistralrsError, OpInputError, UnsupportedCallError
from mistralrs_torch.ops import CallSpec, OpSpec, PreparedWeight, QuantizedWeight, kernel_for
from mistralrs_torch.runtime._measure import Tuner, bucket


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
        skipped = "; ".join(f"{name} ({feature}) refused: {reason}" for name, feature, reason in self.skipped)
        return f"{self.op} [{self.call.describe()}] -> {self.chosen}" + (f" (fallback: {skipped})" if skipped else "")


def _guarded(kernel: Callable[..., Any], guard: Callable[[tuple[Any, ...], dict[str, Any], bool], None],
             read_values: bool) -> Callable[..., Any]:
    def checked(*args: Any, **kwargs: Any) -> Any:
        guard(args, kwargs, read_values)
        return kernel(*args, **kwargs)

    return checked


class Dispatcher:
    """``runtime.<op>``: chooses among ``backends`` (highest dispatch priority first) per call signature.

    ``read_values`` makes the value-reading input checks run on every device (MISTRALRS_CHECK_INPUTS=1,
    doctor, the kit); they always run for CPU tensors.
    """

    def __init__(self, spec: OpSpec, backends: Sequence[Any], *, no_fallback: bool, read_values: bool,
                 tuner: Tuner | None = None) -> None:
        self.spec = spec
        self.op = spec.name
        # A backend that does not implement this op at all leaves the method out or sets it to None: it is not
        # a candidate, so passing it over is not a fallback.
        self.backends = tuple(b for b in backends if callable(getattr(b, spec.name, None)))
        self.no_fallback = no_fallback
        self.read_values = read_values
        #: The memo of the hot path: the op's cheap key -> the kernel (with its guard) for that signature.
        self.cache: dict[Hashable, Callable[..., Any]] = {}
        #: The choice per call signature: CallSpec -> (backend, kernel).
        self.chosen: dict[CallSpec, tuple[Any, Callable[..., Any]]] = {}
        self.bindings: list[Binding] = []
        #: Measured selection's tuner (None: the first supporting backend in dispatch priority wins).
        self.tuner = tuner
        # Measured selection chooses per bucket of the call's token count, so the bucket joins the key.
        self._key = spec.key if tuner is None else (
            lambda *a, **k: (spec.key(*a, **k), bucket(spec.rows(*a, **k))))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            function = self.cache.get(self._key(*args, **kwargs))
            if function is None:
                function = self._bind_call(args, kwargs)
            return function(*args, **kwargs)
        except MistralrsError:
            raise
        except Exception as exc:
            self._blame_arguments(args, kwargs, exc)
            raise

    def _blame_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception) -> None:
        """Raise OpInputError (from ``exc``) when the arguments break the op's contract; return when they do not."""
        try:
            inspect.signature(self.spec.check).bind(*args, **kwargs)
        except TypeError as bad:
            parameters = ", ".join(inspect.signature(self.spec.check).parameters)
            raise OpInputError(f"{self.op}: {bad}; the op takes ({parameters})") from exc
        try:
            self.spec.check(*args, **kwargs)
            if self.spec.guard is not None:
                self.spec.guard(args, kwargs, True)
        except OpInputError as problem:
            raise problem from exc
        except Exception:  # noqa: BLE001 - a check that trips over the same bad input cannot say more than exc
            return

    def _signature(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallSpec:
        """The CallSpec the choice for these (checked) arguments is made and cached under."""
        call = self.spec.spec(*args, **kwargs)
        if self.tuner is not None and not self.spec.prepare:
            call = call._replace(rows=bucket(self.spec.rows(*args, **kwargs)))
        return call

    def _bind_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[..., Any]:
        self.spec.check(*args, **kwargs)
        only = args[1].backend if self.spec.prepare else None
        call = self._signature(args, kwargs)
        function = self.choose(call, only=only, arguments=(args, kwargs))[1]
        if self.spec.guard is not None:
            function = _guarded(function, self.spec.guard, self.read_values or call.device == "cpu")
        self.cache[self._key(*args, **kwargs)] = function
        return function

    def backend_for(self, *args: Any, **kwargs: Any) -> str:
        """The name of the backend that runs these arguments: a prepared weight's preparer, else the one chosen
        for their call signature (chosen now, as a call would, if it is not yet)."""
        if self.spec.prepare:
            return str(args[1].backend)
        self.spec.check(*args, **kwargs)
        return str(self.choose(self._signature(args, kwargs), arguments=(args, kwargs))[0].name)

    def choose(self, call: CallSpec, *, only: str | None = None,
               arguments: tuple[tuple[Any, ...], dict[str, Any]] | None = None) -> tuple[Any, Callable[..., Any]]:
        """The backend for ``call`` and its kernel, chosen once per signature.

        Under priority selection the first supporting backend wins; under measured selection (a tuner, and
        ``arguments`` to time) the fastest correct one. ``only`` restricts the candidates to one backend (a
        prepared weight can be run only by its preparer).
        """
        if call in self.chosen and (only is None or self.chosen[call][0].name == only):
            return self.chosen[call]
        skipped, supporting = self._candidates(call, only)
        if self.tuner is not None and arguments is not None and len(supporting) > 1:
            pairs = [(b, kernel_for(b, self.op, call)) for b in supporting]
            chosen = self.tuner.pick(self.spec, call, pairs, *arguments)
        else:
            chosen = (supporting[0], kernel_for(supporting[0], self.op, call))
        return self._bind(call, chosen, skipped)

    def _candidates(self, call: CallSpec, only: str | None) -> tuple[list[tuple[str, str, str]], list[Any]]:
        """(why each backend before the first supporting one refused, every supporting backend in order)."""
        skipped: list[tuple[str, str, str]] = []
        supporting = []
        for backend in (b for b in self.backends if only is None or b.name == only):
            support = backend.supports(call)
            if support.ok:
                supporting.append(backend)
            elif not supporting:
                skipped.append((backend.name, backend.feature, support.reason or "no reason given"))
        if not supporting:
            reasons = "; ".join(f"{name} ({feature}): {reason}" for name, feature, reason in skipped) or (
                f"no bound backend is named {only!r}" if only else "no backend is bound")
            raise UnsupportedCallError(f"no {self.op} backend supports {call.describe()}: {reasons}")
        if skipped and self.no_fallback:
            name, feature, reason = skipped[0]
            raise FallbackError(
                f"{self.op}: backend {name} ({feature}) refused the call ({reason}) and {supporting[0].name} would "
                f"take it; MISTRALRS_NO_FALLBACK=1 forbids that: change the call (dtype, head size, device) "
                f"or unset MISTRALRS_NO_FALLBACK")
        return skipped, supporting

    def _bind(self, call: CallSpec, chosen: tuple[Any, Callable[..., Any]],
              skipped: list[tuple[str, str, str]]) -> tuple[Any, Callable[..., Any]]:
        self.bindings.append(Binding(self.op, call, chosen[0].name, tuple(skipped)))
        self.chosen[call] = chosen
        return chosen

    def prepare(self, weight: QuantizedWeight, call: CallSpec, device: str) -> PreparedWeight:
        """Choose the backend for ``call`` and let it prepare ``weight`` once (the op's ``prepare`` method).

        Under measured selection every supporting backend prepares it and the fastest correct one on a chat turn
        in miniature (one-token calls and a prompt's call; see Tuner.pick_prepared) keeps its payload.
        """
        skipped, supporting = self._candidates(call, None)
        if self.tuner is not None and len(supporting) > 1:
            backend, payload = self.tuner.pick_prepared(self.spec, call, supporting, weight, device)
        else:
            backend = supporting[0]
            payload = getattr(backend, self.spec.prepare)(weight, call, device)
        if call not in self.chosen:
            self._bind(call, (backend, kernel_for(backend, self.op, call)), skipped)
        return PreparedWeight(backend.name, payload, call, weight.shape)
