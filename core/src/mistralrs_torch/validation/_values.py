"""Values written as text (environment variables, command-line options), parsed strictly.

Strictly means: ASCII digits only (``str.isdigit`` accepts "²" and ``int`` accepts
"١٢" or "1_0"), bounded lengths, finite numbers within a documented range. Every
failure is an :class:`~mistralrs_torch.InputError` that names the variable or
option, shows the value cut short, and says what to write instead.
"""

from __future__ import annotations

from collections.abc import Mapping

from mistralrs_torch._errors import InputError
from mistralrs_torch.validation._text import shown

_DIGITS = frozenset("0123456789")
#: More digits than any bounded integer we read needs; longer text is refused before int() sees it.
_MAX_DIGITS = 20
#: A week: the longest wait (timeouts, grace periods) a setting may ask for; longer overflows torch's clocks
#: long before it is useful.
MAX_SECONDS = 7 * 24 * 3600.0
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _label(name: str, raw: str) -> str:
    # Options read "--grace 'x'", variables "NAME='x'".
    return f"{name} {shown(raw)}" if name.startswith("-") else f"{name}={shown(raw)}"


def parse_int(raw: str, name: str, low: int, high: int, what: str) -> int:
    """An integer in ``low..high`` written in ASCII digits (an optional sign, surrounding blanks ignored).

    ``name`` is the variable or option, ``what`` says what the value means ("this process's rank, 0..3").
    """
    text = raw.strip()
    body = text[1:] if text[:1] in ("+", "-") else text
    if not body or not _DIGITS.issuperset(body):
        raise InputError(_label(name, raw), "is not an integer (ASCII digits 0-9)", f"set it to {what}")
    value = int(text) if len(body) <= _MAX_DIGITS else None
    if value is None or not low <= value <= high:
        label = _label(name, raw) if value is None else f"{name} {value}" if name.startswith("-") else f"{name}={value}"
        raise InputError(label, f"is outside {low}..{high}", f"set it to {what}")
    return value


def _is_decimal(text: str) -> bool:
    """ASCII decimal notation: 12, 1.5, .5, 1e3, 2.5E-1 (no nan, inf, underscores or other scripts' digits)."""
    mantissa, _, exponent = text.lower().partition("e")
    whole, _, fraction = mantissa.partition(".")
    if not (whole or fraction) or not _DIGITS.issuperset(whole + fraction):
        return False
    if "e" in text.lower():
        digits = exponent[1:] if exponent[:1] in ("+", "-") else exponent
        return bool(digits) and len(digits) <= 4 and _DIGITS.issuperset(digits)
    return True


def parse_seconds(raw: str, name: str, high: float = MAX_SECONDS, fix: str = "") -> float:
    """A number of seconds > 0 and at most ``high`` (a week unless said otherwise); ``fix`` replaces the advice."""
    text = raw.strip()
    body = text[1:] if text[:1] == "+" else text
    value = float(body) if len(body) <= 64 and _is_decimal(body) else None
    if value is None or not 0 < value <= high:
        raise InputError(_label(name, raw), f"is not a number of seconds > 0 and <= {high:g}",
                         fix or f"write a plain number such as {name}{' ' if name.startswith('-') else '='}300")
    return value


def parse_flag(raw: str, name: str) -> bool:
    """A boolean: 1/true/yes/on or 0/false/no/off (any case; blank is false)."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InputError(_label(name, raw), "is not a boolean", f"set {name}=1 or {name}=0")


def env_int(environ: Mapping[str, str], name: str, low: int, high: int, what: str,
            default: int | None = None) -> int | None:
    """The integer variable ``name`` (see :func:`parse_int`), ``default`` when unset or blank."""
    raw = environ.get(name, "")
    return parse_int(raw, name, low, high, what) if raw.strip() else default


def env_seconds(environ: Mapping[str, str], name: str, default: float, high: float = MAX_SECONDS,
                fix: str = "") -> float:
    """The seconds variable ``name`` (see :func:`parse_seconds`), ``default`` when unset or blank."""
    raw = environ.get(name, "")
    return parse_seconds(raw, name, high, fix) if raw.strip() else default


#: Names a list variable may hold, and how long each may be (plugin and feature names are short).
_MAX_ITEMS, _MAX_ITEM_LENGTH = 64, 100


def env_flag(environ: Mapping[str, str], name: str, default: bool = False) -> bool:
    """A boolean variable; raises InputError (a ConfigError) on a value that is neither true nor false."""
    raw = environ.get(name)
    return default if raw is None else parse_flag(raw, name)


def env_list(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma- or space-separated list variable, empty when unset; InputError past 64 names of 100 characters."""
    items = tuple(item for item in environ.get(name, "").replace(",", " ").split() if item)
    long = next((item for item in items if len(item) > _MAX_ITEM_LENGTH), None)
    if long is not None or len(items) > _MAX_ITEMS:
        problem = f"names {shown(long)}, longer than {_MAX_ITEM_LENGTH} characters" if long is not None else \
            f"names {len(items)} entries, more than {_MAX_ITEMS}"
        raise InputError(name, problem, f"list at most {_MAX_ITEMS} names, separated by commas or spaces")
    return items
