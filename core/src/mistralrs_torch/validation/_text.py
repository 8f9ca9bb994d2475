"""User input shown back in messages: cut to a few dozen characters, never megabytes, never a traceback."""

from __future__ import annotations

from collections.abc import Iterable

#: Characters of a user's value an error message repeats; the rest is counted, not echoed.
SHOWN = 60
#: Integers wider than this many bits are described, not printed (str() refuses over 4300 digits).
_WIDE_BITS = 256


def shown(value: object, limit: int = SHOWN) -> str:
    """A short, safe rendering of ``value`` for an error message (quoted strings, cut past ``limit``)."""
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}... ({len(value)} characters)"
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        if value.bit_length() > _WIDE_BITS:
            return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
        return str(value)
    import reprlib  # only for containers, which only error paths show

    class _Short(reprlib.Repr):
        def repr_int(self, x: int, level: int) -> str:
            return shown(x)

    short = _Short()
    short.maxlevel, short.maxstring, short.maxother = 2, limit, limit
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = 4
    text = short.repr(value)
    return text if len(text) <= 2 * limit else text[:2 * limit] + "..."


def did_you_mean(name: str, choices: Iterable[str]) -> str | None:
    """The closest of ``choices`` to ``name``, or None (absurdly long names are not compared)."""
    if len(name) > 4 * SHOWN:
        return None
    import difflib  # only on error paths: it costs milliseconds to import

    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(name.lower(), list(choices), n=1, cutoff=0.6)
    return close[0] if close else None
