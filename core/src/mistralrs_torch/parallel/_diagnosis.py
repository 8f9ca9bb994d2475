"""Diagnosis of a failed collective: which rank to blame, from the heartbeats, and the CollectiveError that says so.

Only a rank whose heartbeat stopped without a mark is blamed. Ranks that left
after a failure of their own (they are survivors too) or closed normally carry
a mark, and are named as such; when nothing can be told, the message says so
rather than guess.
"""

from __future__ import annotations

import time

from mistralrs_torch._errors import CollectiveError
from mistralrs_torch.parallel._heartbeat import Heartbeat, Liveness
from mistralrs_torch.parallel._rendezvous import COLLECTIVE_TIMEOUT_VAR, Rendezvous
from mistralrs_torch.parallel._store import first_line


def diagnose(beat: Heartbeat | None) -> Liveness:
    """The liveness of the other ranks, watched for up to one heartbeat window so that a rank that has
    just died (its counter not stale yet) is still named."""
    if beat is None:
        return Liveness()
    deadline = time.monotonic() + beat.window + beat.interval
    while True:
        seen = beat.liveness()
        if seen.silent or seen.store_gone or time.monotonic() >= deadline:
            return seen
        time.sleep(min(0.05, beat.interval))


def _ranks(ranks: tuple[int, ...]) -> str:
    return f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"


def _who(seen: Liveness, r: Rendezvous, beat: Heartbeat | None, backend: str) -> str:
    if seen.store_gone:
        host = "the launcher's rendezvous store" if r.agent_store else \
            f"rank 0 stopped responding: the rendezvous store it hosts at {r.master_addr}:{r.master_port}"
        return f"{host} does not answer (crashed, killed or frozen)"
    left = [f"{_ranks(seen.failed)} failed too and left" if seen.failed else "",
            f"{_ranks(seen.closed)} closed {'their' if len(seen.closed) > 1 else 'its'} communicator and left"
            if seen.closed else ""]
    left_text = "; ".join(part for part in left if part)
    if seen.silent:
        who = (f"{_ranks(seen.silent)} stopped responding (no heartbeat for over "
               f"{beat.window if beat else 0:.1f}s: crashed, killed or frozen)")
        return f"{who}; {left_text}" if left_text else who
    if left_text:
        return f"{left_text}; no rank is silent, so the cause is in the output of those ranks"
    if beat is not None:
        return ("every rank still answers heartbeats, so a peer is stuck or too slow, or the network drops "
                f"{backend}'s connections between the machines")
    return "a peer failed (no heartbeat here to tell which)"


def failure(what: str, exc: BaseException, started: float, r: Rendezvous, timeout: float, backend: str,
            beat: Heartbeat | None) -> CollectiveError:
    """The CollectiveError for collective ``what`` that raised ``exc`` after starting at ``started``."""
    elapsed = time.monotonic() - started
    seen = diagnose(beat)
    peers = [0] if seen.store_gone and not r.agent_store else list(seen.silent)
    return CollectiveError(
        f"rank {r.rank} of {r.world_size}: {what} failed after {elapsed:.1f}s (collective timeout "
        f"{timeout:g}s, {COLLECTIVE_TIMEOUT_VAR}): {_who(seen, r, beat, backend)} ({backend}: {first_line(exc)}): "
        f"check the output of the rank(s) named and restart all ranks; raise {COLLECTIVE_TIMEOUT_VAR} if a rank is "
        "legitimately slower", rank=r.rank, peers=peers, timeout=timeout)
