"""Named system profiles (``--system h100``) and snapshot files (``--system box.json``)."""

from __future__ import annotations

import os

from mistralrs_torch._errors import SystemProfileError
from mistralrs_torch.system._snapshot import SystemSnapshot

__all__ = ["PROFILE_NAMES", "load_system"]

_PROFILES = os.path.join(os.path.dirname(__file__), "profiles")
#: The profiles shipped with mistralrs, usable as ``--system NAME``.
PROFILE_NAMES = tuple(sorted(name[:-5] for name in os.listdir(_PROFILES) if name.endswith(".json")))


def load_system(name_or_path: str) -> SystemSnapshot:
    """Load a named profile or a JSON file written by ``mistralrs plugins system --json``."""
    import json  # here, not at the top: `plugins list` on this machine never needs it

    path = name_or_path
    if name_or_path in PROFILE_NAMES:
        path, source = os.path.join(_PROFILES, f"{name_or_path}.json"), name_or_path
    elif os.path.isfile(path):
        source = path
    else:
        import difflib

        close = difflib.get_close_matches(name_or_path, PROFILE_NAMES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise SystemProfileError(
            f"--system {name_or_path!r} is neither a profile nor a file: {hint}"
            f"use one of {', '.join(PROFILE_NAMES)}, or a file written by `mistralrs plugins system --json`")
    try:
        with open(path, encoding="utf-8") as file:
            data = json.loads(file.read())
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemProfileError(f"cannot read system snapshot {source}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise SystemProfileError(f"system snapshot {source} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                                 f"{exc.msg}): write it with `mistralrs plugins system --json`") from None
    if not isinstance(data, dict):
        raise SystemProfileError(f"system snapshot {source} must hold a JSON object, not {type(data).__name__}")
    return SystemSnapshot.from_json(data, source=source)
