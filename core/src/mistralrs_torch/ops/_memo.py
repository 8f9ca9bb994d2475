"""A small memo of values computed from tensors, valid while those tensors are the same and unmodified.

The layers of one decode step pass the same block table, sequence lengths and
positions to every layer; what a backend derives from them (gather indices and
masks, cos and sin, a validity check) is computed once per step with this memo.
A tensor is recognised by identity (a weak reference) and its version counter,
which every in-place change increments.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Sequence
from typing import Any


class TensorMemo:
    """The last ``size`` values computed, each keyed by its tensors' identities and versions and an extra key."""

    def __init__(self, size: int = 4) -> None:
        self._size = size
        self._entries: list[tuple[tuple[Any, ...], tuple[Any, ...], Any]] = []

    def get(self, tensors: Sequence[Any], extra: Hashable, compute: Callable[[], Any]) -> Any:
        """The value for these tensors and ``extra``, computing (and remembering) it when it is not known."""
        try:
            stamp = (tuple(t._version for t in tensors), extra)
        except RuntimeError:  # inference-mode tensors track no version: nothing can be remembered safely
            return compute()
        for refs, known, value in self._entries:
            if known == stamp and all(ref() is t for ref, t in zip(refs, tensors, strict=True)):
                return value
        value = compute()
        self._entries = [(tuple(weakref.ref(t) for t in tensors), stamp, value), *self._entries[: self._size - 1]]
        return value

    def forget(self) -> None:
        self._entries = []
