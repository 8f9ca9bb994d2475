"""Named system profiles (``--system h100``) and snapshot files (``--system box.json``)."""

from __future__ import annotations

import os

from mistralrs_torch._errors import InputError, SystemProfileError
from mistralrs_torch.system._schema import MAX_SNAPSHOT_BYTES
from mistralrs_torch.system._snapshot import SystemSnapshot

_PROFILES = os.path.join(os.path.dirname(__file__), "profiles")
#: The profiles shipped with mistralrs, usable as ``--system NAME``.
PROFILE_NAMES = tuple(sorted(name[:-5] for name in os.listdir(_PROFILES) if name.endswith(".json")))


def load_system(name_or_path: str) -> SystemSnapshot:
    """Load a named profile or a JSON file written by ``mistralrs plugins system --json``.

    SystemProfileError (exit status 1 in the CLI) names the file and every field at fault.
    """
    from mistralrs_torch.validation import did_you_mean, read_json, shown

    path = name_or_path
    if name_or_path in PROFILE_NAMES:
        path, source = os.path.join(_PROFILES, f"{name_or_path}.json"), name_or_path
    elif os.path.isfile(path):
        source = path
    else:
        close = did_you_mean(name_or_path, PROFILE_NAMES)
        hint = f"did you mean {close!r}? " if close else ""
        raise SystemProfileError(
            f"--system {shown(name_or_path)} is neither a profile nor a file: {hint}"
            f"use one of {', '.join(PROFILE_NAMES)}, or a file written by `mistralrs plugins system --json`")
    try:
        data = read_json(path, "a system snapshot", max_bytes=MAX_SNAPSHOT_BYTES,
                         fix="write it with `mistralrs plugins system --json`")
    except InputError as exc:
        raise SystemProfileError(f"system snapshot {source} {exc.problem}: {exc.fix}") from None
    if not isinstance(data, dict):
        raise SystemProfileError(f"system snapshot {source} must hold a JSON object, not {shown(data)}: "
                                 "write it with `mistralrs plugins system --json`")
    return SystemSnapshot.from_json(data, source=source)
