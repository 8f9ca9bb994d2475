"""The server's metrics in Prometheus' text format (version 0.0.4), written without a client library.

Gauges are read from the engine loop's latest snapshot; counters and histograms are fed by the loop as tokens
come. Everything is guarded by one lock: the loop thread writes, request handlers read.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    """Cumulative buckets, a sum and a count, as Prometheus histograms are exposed."""

    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        self.name, self.help, self.bounds = name, help_text, tuple(buckets)
        self.counts = [0] * len(self.bounds)
        self.sum, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        out += [f'{self.name}_bucket{{le="{bound:g}"}} {n}' for bound, n in zip(self.bounds, self.counts, strict=True)]
        return [*out, f'{self.name}_bucket{{le="+Inf"}} {self.count}', f"{self.name}_sum {self.sum:.6f}",
                f"{self.name}_count {self.count}"]


_GAUGES = {
    "mistralrs_requests_running": "Requests in the running batch.",
    "mistralrs_requests_waiting": "Requests waiting for room in the batch or the KV cache.",
    "mistralrs_kv_blocks_used": "KV cache blocks held by requests.",
    "mistralrs_kv_blocks_free": "KV cache blocks free.",
}


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gauges = dict.fromkeys(_GAUGES, 0)
        self._tokens = 0
        self._outcomes: dict[str, int] = {}
        self.ttft = Histogram("mistralrs_time_to_first_token_seconds",
                              "Seconds from a request's arrival to its first generated token.", _TTFT_BUCKETS)
        self.tpot = Histogram("mistralrs_time_per_output_token_seconds",
                              "Seconds between two consecutive generated tokens of a request.", _TPOT_BUCKETS)

    def set_state(self, *, running: int, waiting: int, blocks_used: int, blocks_free: int) -> None:
        with self._lock:
            self._gauges.update({"mistralrs_requests_running": running, "mistralrs_requests_waiting": waiting,
                                 "mistralrs_kv_blocks_used": blocks_used, "mistralrs_kv_blocks_free": blocks_free})

    def token(self, *, first_after: float | None, since_previous: float | None) -> None:
        """One generated token: its delay after the request's arrival (the first) or after the previous token."""
        with self._lock:
            self._tokens += 1
            if first_after is not None:
                self.ttft.observe(first_after)
            if since_previous is not None:
                self.tpot.observe(since_previous)

    def finished(self, outcome: str) -> None:
        """A request ended: "stop", "length", "cancelled" or "error"."""
        with self._lock:
            self._outcomes[outcome] = self._outcomes.get(outcome, 0) + 1

    @property
    def gauges(self) -> Mapping[str, int]:
        with self._lock:
            return dict(self._gauges)

    def render(self) -> str:
        with self._lock:
            lines: list[str] = []
            for name, help_text in _GAUGES.items():
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {self._gauges[name]}"]
            lines += ["# HELP mistralrs_generated_tokens_total Tokens generated, over all requests.",
                      "# TYPE mistralrs_generated_tokens_total counter",
                      f"mistralrs_generated_tokens_total {self._tokens}",
                      "# HELP mistralrs_requests_finished_total Requests ended, by outcome.",
                      "# TYPE mistralrs_requests_finished_total counter"]
            lines += [f'mistralrs_requests_finished_total{{outcome="{k}"}} {v}'
                      for k, v in sorted(self._outcomes.items())]
            lines += self.ttft.lines() + self.tpot.lines()
        return "\n".join(lines) + "\n"
