"""The heartbeat: each rank bumps its counter in the rendezvous store and watches everyone else's.

After a failed collective the survivors look at which counters stopped moving,
so the error can say "rank 2 stopped responding" rather than gloo's
"Connection closed by peer 127.0.0.1:46731". A rank that leaves on purpose
(it failed itself, or closed its communicator) adds a large mark to its counter
on the way out, so that the survivors do not mistake it for the culprit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from mistralrs_torch.parallel._store import LEFT_AFTER_FAILURE, LEFT_CLOSED, first_line, heartbeat_key, seconds


@dataclass(frozen=True)
class Liveness:
    """What the heartbeats say about the other ranks at one moment."""

    #: Ranks whose counter stopped moving without a mark: crashed, killed or frozen.
    silent: tuple[int, ...] = ()
    #: The store itself stopped answering (its host, rank 0 unless a launcher's agent hosts it, is gone).
    store_gone: bool = False
    #: Ranks that left after a failure of their own, and ranks that closed normally.
    failed: tuple[int, ...] = ()
    closed: tuple[int, ...] = ()


class Heartbeat:
    """Bumps this rank's counter and reads everyone's, every ``interval`` seconds, from a daemon thread.

    The thread has its own store client: a store call on a frozen store host never returns (TCPStore's
    timeout does not cover it), and only this thread may be left hanging, never the caller.
    """

    def __init__(self, host: str, port: int, prefix: str, rank: int, world_size: int, interval: float) -> None:
        self.rank, self.world_size, self.interval = rank, world_size, interval
        #: A counter that has not moved for this long belongs to a dead or frozen rank.
        self.window = 3 * interval
        self.keys = [heartbeat_key(prefix, r) for r in range(world_size)]
        now = time.monotonic()
        self.values: list[int | None] = [None] * world_size
        self.last_change = [now] * world_size
        self.last_ok = now
        self.error = ""
        self._host, self._port = host, port
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"mistralrs-heartbeat-rank{rank}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            store = dist.TCPStore(self._host, self._port, None, False, seconds(max(5.0, 10 * self.interval)))
        except Exception as exc:  # noqa: BLE001 - the thread reports through self.error, never raises
            self.error = first_line(exc)
            return
        read: Callable[[], list[Any]] = (lambda: store.multi_get(self.keys)) if hasattr(store, "multi_get") \
            else (lambda: [store.add(k, 0) for k in self.keys])
        while not self._stop.wait(self.interval):
            try:
                store.add(self.keys[self.rank], 1)
                values = [int(v) for v in read()]
            except Exception as exc:  # noqa: BLE001 - the store host is gone: stop, last_ok goes stale
                self.error = first_line(exc)
                return
            now = time.monotonic()
            for r, value in enumerate(values):
                if value != self.values[r]:
                    self.values[r], self.last_change[r] = value, now
            self.last_ok = now

    def liveness(self) -> Liveness:
        """The other ranks as the last readings show them."""
        now = time.monotonic()
        if now - self.last_ok > self.window:
            return Liveness(store_gone=True)
        others = [r for r in range(self.world_size) if r != self.rank]
        marks = {r: self.values[r] or 0 for r in others}
        failed = tuple(r for r in others if marks[r] >= LEFT_AFTER_FAILURE)
        closed = tuple(r for r in others if LEFT_CLOSED <= marks[r] < LEFT_AFTER_FAILURE)
        silent = tuple(r for r in others if marks[r] < LEFT_CLOSED and now - self.last_change[r] > self.window)
        return Liveness(silent, False, failed, closed)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * self.interval)
