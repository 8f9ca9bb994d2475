"""Stop strings over streamed text: text is released only once it cannot be the start of a stop string."""

from __future__ import annotations

from collections.abc import Sequence


class StopText:
    """Feed text pieces as they are decoded; get back what is safe to show and whether a stop string appeared.

    A stop string may span several tokens, so the end of the text that is a proper prefix of some stop string
    is held back until the next pieces rule it out (or complete it). On a match the text before the stop string
    is released and the stop string and anything after it are dropped.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.text = ""
        self.released = 0  # no stop string can start before this offset (its prefix would have been held back)

    def push(self, piece: str) -> tuple[str, bool]:
        """(text now safe to show, whether a stop string ended it)."""
        self.text += piece
        if not self.stops:
            return self._release(len(self.text)), False
        found = [i for s in self.stops if (i := self.text.find(s, self.released)) >= 0]
        if found:
            end = min(found)
            out = self._release(end)
            self.text = self.text[:end]
            return out, True
        return self._release(len(self.text) - self._held()), False

    def flush(self) -> str:
        """Everything held back: generation ended otherwise, so it was no stop string."""
        return self._release(len(self.text))

    def _held(self) -> int:
        """Length of the longest unreleased end of the text that a stop string starts with."""
        tail = len(self.text) - self.released
        return max((k for s in self.stops for k in range(min(len(s) - 1, tail), 0, -1)
                    if self.text.endswith(s[:k])), default=0)

    def _release(self, end: int) -> str:
        out = self.text[self.released:end]
        self.released = max(self.released, end)
        return out
