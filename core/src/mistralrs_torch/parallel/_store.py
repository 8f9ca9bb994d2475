"""Talking to the rendezvous store (torch's TCPStore) safely: key names, marks, calls with a deadline, errors.

A call on a store whose host is frozen may never return (TCPStore's own timeout
does not cover every call), so every call made while a user waits goes through
:func:`within`: it runs on a daemon thread that is abandoned at the deadline.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: Added to a rank's heartbeat counter when it closes its communicator normally ...
LEFT_CLOSED = 1 << 40
#: ... and when it leaves after a failure of its own (it is a survivor, not the culprit).
LEFT_AFTER_FAILURE = 1 << 41


class Late(Exception):
    """A store call did not return before its deadline (the store's host is frozen or unreachable)."""


def seconds(value: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=value)


def heartbeat_key(prefix: str, rank: int) -> str:
    return f"{prefix}hb/{rank}"


def first_line(exc: BaseException) -> str:
    """The fact in a torch.distributed error, without gloo's source location, advice or C++ stack."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    # gloo prefixes its messages with the C++ source location: it means nothing to a user.
    if line.startswith("[") and "] " in line:
        line = line.split("] ", 1)[1]
    # ...and follows the fact with generic advice ("This is typically caused by ... GLHF!"): keep the fact.
    return line.split(". This is typically")[0][:300]


def within(limit: float, call: Callable[[], T]) -> T:
    """``call()``, or Late when it has not returned after ``limit`` seconds (the thread running it is abandoned)."""
    box: list[tuple[str, Any]] = []

    def run() -> None:
        try:
            box.append(("ok", call()))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            box.append(("error", exc))

    thread = threading.Thread(target=run, name="mistralrs-store-call", daemon=True)
    thread.start()
    thread.join(max(0.0, limit))
    if not box:
        raise Late(f"no answer within {limit:.1f}s")
    kind, value = box[0]
    if kind == "error":
        raise value
    result: T = value
    return result
