"""torch's own messages during a communicator's start-up: into a log file, off the user's terminal.

While ranks meet, torch's C++ side writes straight to file descriptor 2: socket
retry warnings while rank 0 is not up yet, and on a failure warnings with
20-frame C++ stacks, which say nothing our error does not say better. During
start-up descriptor 2 points at a per-rank log file; a start-up error names
the file when torch wrote to it, and a successful start-up deletes it.
``MISTRALRS_DEBUG=1`` leaves descriptor 2 alone, so that torch's messages reach
the terminal as they happen.
"""

from __future__ import annotations

import os
import sys
import tempfile
from types import TracebackType

DEBUG_VAR = "MISTRALRS_DEBUG"


class NativeLog:
    """``with NativeLog(rank, enabled) as log:`` sends descriptor 2 to a log file; ``log.mention()`` names it."""

    def __init__(self, rank: int, enabled: bool) -> None:
        self.rank, self.enabled = rank, enabled
        self.path = ""
        self._fd: int | None = None
        self._saved: int | None = None

    def __enter__(self) -> NativeLog:
        if not self.enabled:
            return self
        _flush()
        try:
            self._fd, self.path = tempfile.mkstemp(prefix=f"mistralrs-rank{self.rank}-", suffix=".log")
            self._saved = os.dup(2)
            os.dup2(self._fd, 2)
        except OSError:  # no temporary folder or no descriptors to spare: leave the terminal as it is
            self._close(keep=False)
        return self

    def mention(self) -> str:
        """" (torch's own messages: PATH)" when torch wrote to the log, else "" (for a start-up error)."""
        if self._fd is None:
            return ""
        _flush()
        try:
            written = os.fstat(self._fd).st_size > 0
        except OSError:
            written = False
        return f" (torch's own messages: {self.path}; {DEBUG_VAR}=1 shows them on the terminal)" if written else ""

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._close(keep=error is not None and bool(self.mention()))

    def _close(self, keep: bool) -> None:
        _flush()
        if self._saved is not None:
            os.dup2(self._saved, 2)
            os.close(self._saved)
            self._saved = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.path and not keep:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def _flush() -> None:
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):  # no stderr, or a closed one
        pass
