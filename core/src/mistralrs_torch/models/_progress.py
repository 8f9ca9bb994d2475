"""A one-line load progress bar, drawn only when stdout is a terminal."""

from __future__ import annotations

import sys
from typing import TextIO


class Progress:
    """``label [#####.....] done/total``, redrawn in place; erased by :meth:`close`."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.stream = sys.stdout if stream is None else stream
        self.enabled = self.stream.isatty()
        self.label, self.total, self.done = label, max(total, 1), 0

    def advance(self) -> None:
        self.done += 1
        if self.enabled:
            filled = 30 * self.done // self.total
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total}")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()
