"""Reading JSON and TOML files the user names, with limits: size, nesting depth, number length.

Python's parsers recurse (a file of 5000 ``[`` raises RecursionError), refuse
integers over 4300 digits with a bare ValueError, and tomllib slows down
quadratically on long dotted keys. These readers turn each of those into an
:class:`~mistralrs_torch.InputError` naming the file, before or instead of the
parser's own failure.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from mistralrs_torch._errors import InputError

#: Nesting deeper than this is refused in every file we read (ours are 3 or 4 levels deep).
MAX_DEPTH = 32
#: Dotted-key parts (a.b.c) a TOML line may have before it is refused.
_MAX_KEY_PARTS = 64


def _read_text(path: str, what: str, max_bytes: int, fix: str) -> str:
    try:
        if os.path.isdir(path):
            raise InputError(path, "is a folder, not a file", fix)
        with open(path, "rb") as file:
            raw = file.read(max_bytes + 1)
    except FileNotFoundError:
        raise InputError(path, "does not exist", fix) from None
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or exc})", "check the path and its permissions") \
            from None
    if len(raw) > max_bytes:
        size = f"{max_bytes >> 20} MiB" if max_bytes >= 1 << 20 else f"{max_bytes >> 10} KiB"
        raise InputError(path, f"is over {size}: too large for {what}", fix)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"is not UTF-8 text (byte {exc.start})", "save it as UTF-8") from None


def _json_depth(text: str) -> int:
    import re
    from itertools import accumulate

    brackets = re.sub(r'"(?:[^"\\]|\\.)*"|[^\[\]{}]', "", text)
    return max(accumulate(1 if c in "[{" else -1 for c in brackets), default=0)


class _Refused(ValueError):
    """What a parser hook refuses, phrased to follow the file's name."""


def _duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            from mistralrs_torch.validation._text import shown

            raise _Refused(f"has the key {shown(key)} more than once (the last one would silently win)")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise _Refused(f"holds {name}, which is not a JSON number")


def read_json(path: str, what: str, *, max_bytes: int, fix: str, max_depth: int = MAX_DEPTH,
              pairs: Callable[[list[tuple[str, Any]]], Any] | None = None) -> Any:
    """The JSON value in ``path`` (``what`` says what the file should be, e.g. "a system snapshot").

    Refuses files over ``max_bytes``, nesting deeper than ``max_depth``, duplicate keys (unless
    ``pairs`` builds objects its own way), NaN and Infinity, and integers too long to parse, each as
    an InputError naming the file.
    """
    import json

    text = _read_text(path, what, max_bytes, fix)
    if not text.strip():
        raise InputError(path, "is empty", fix)
    if _json_depth(text) > max_depth:
        raise InputError(path, f"nests arrays or objects more than {max_depth} deep: it is not {what}", fix)
    try:
        return json.loads(text, object_pairs_hook=pairs or _duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
                         "fix the JSON syntax (double-quoted keys, no trailing commas)") from None
    except _Refused as exc:
        raise InputError(path, str(exc), fix) from None
    except ValueError:  # json lets int()'s 4300-digit limit through as a bare ValueError
        raise InputError(path, "holds a number too long to read (over 4300 digits)", fix) from None
    except RecursionError:
        raise InputError(path, "nests too deeply to read", fix) from None


def _key_parts(text: str) -> int:
    """The most dotted-key parts on one line (tomllib takes quadratic time on thousands of them)."""
    import re

    most = 0
    for line in text.splitlines():
        if line.lstrip().startswith("["):
            most = max(most, line.count(".") + 1)
        for segment in re.split(r"[{,]", line):
            if "=" in segment:
                most = max(most, segment.split("=", 1)[0].count(".") + 1)
    return most


def read_toml(path: str, what: str, *, max_bytes: int, fix: str) -> dict[str, Any]:
    """The TOML document in ``path``, with the limits of :func:`read_json` (dotted keys included)."""
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    text = _read_text(path, what, max_bytes, fix)
    if _key_parts(text) > _MAX_KEY_PARTS:
        raise InputError(path, f"has a key of more than {_MAX_KEY_PARTS} dotted parts", fix)
    try:
        document: dict[str, Any] = tomllib.loads(text)
        return document
    except tomllib.TOMLDecodeError as exc:
        raise InputError(path, f"is not valid TOML ({exc})", "fix the file, or remove it") from None
    except ValueError:  # tomllib lets int()'s 4300-digit limit through as a bare ValueError
        raise InputError(path, "holds a number too long to read (over 4300 digits)", fix) from None
    except RecursionError:
        raise InputError(path, "nests arrays or tables too deeply to read", fix) from None
