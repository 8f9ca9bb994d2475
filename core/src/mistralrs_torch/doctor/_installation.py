"""Doctor's installation checks: this project's files intact, and the Rust engine's same-named project told apart.

The Rust engine's Python bindings publish ``mistralrs``, ``mistralrs-cuda``,
``mistralrs-metal``, ``mistralrs-mkl`` and ``mistralrs-accelerate`` with a
top-level ``mistralrs`` import package, and its CLI is also called
``mistralrs``. Ours are ``mistralrs-torch*`` / ``mistralrs_torch*``, so both
can share an environment: their package beside ours is information, their CLI
first on PATH is a warning (``mistralrs doctor`` would run theirs), and a
distribution of ours with missing or altered files is an error.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
from collections.abc import Mapping

from mistralrs_torch._distributions import (
    distribution_record,
    installed_names,
    installed_version,
    plugin_entry_points,
)
from mistralrs_torch.ops import CheckResult
from mistralrs_torch.plugins import ENTRY_POINT_GROUP

CORE_DISTRIBUTION = "mistralrs-torch"
#: What our console script names; the Rust CLI's binary never contains it.
_OUR_SCRIPT_MARK = b"mistralrs_torch"
_SHOWN = 3


def installation_checks(environ: Mapping[str, str]) -> list[CheckResult]:
    ours = sorted({CORE_DISTRIBUTION, *(_dashed(ep.distribution) for ep in plugin_entry_points(ENTRY_POINT_GROUP))})
    checks = [check for name in ours if (check := _damage(name)) is not None]
    checks += _other_project(set(ours))
    checks += _command_on_path(environ)
    return checks


def _dashed(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _damage(distribution: str) -> CheckResult | None:
    """An error when files the distribution's RECORD lists are missing or differ from what was installed."""
    found = distribution_record(distribution)
    if found is None:
        return None
    base, rows = found
    missing, altered = [], []
    for path, digest in rows:
        full = os.path.normpath(os.path.join(base, path))
        if path.endswith(".pyc") or "__pycache__" in path:
            continue  # compiled caches come and go; they are not what was installed
        if not os.path.isfile(full):
            missing.append(path)
        elif digest.startswith("sha256=") and _sha256(full) != digest[len("sha256="):]:
            altered.append(path)
    if not missing and not altered:
        return None
    parts = [f"{len(paths)} file(s) {what}: {', '.join(paths[:_SHOWN])}{', ...' if len(paths) > _SHOWN else ''}"
             for paths, what in ((missing, "missing"), (altered, "overwritten by another installation"))
             if paths]
    version = installed_version(distribution)
    return CheckResult(
        "installation",
        f"{distribution} {version} is damaged: {'; '.join(parts)}",
        f"reinstall it: pip install --force-reinstall --no-deps {distribution}=={version} "
        f"(in this repository's workspace: uv sync --reinstall-package {distribution})",
        status="error",
    )


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


def _other_project(ours: set[str]) -> list[CheckResult]:
    """The Rust engine's bindings (or any other mistralrs* distribution that is not ours): information only."""
    others = sorted(
        d
        for d in map(_dashed, installed_names())
        if d.startswith("mistralrs") and not d.startswith(CORE_DISTRIBUTION) and d not in ours
    )
    checks = [
        CheckResult(
            "installation",
            f"{name} {installed_version(name)} is installed: another project (the Rust engine's Python "
            "bindings use this name), independent of this one",
            "nothing to do: it imports as `mistralrs`, this project as `mistralrs_torch`",
            status="info",
        )
        for name in others
    ]
    strays = sorted(
        d for d in map(_dashed, installed_names()) if d.startswith(CORE_DISTRIBUTION + "-") and d not in ours
    )
    checks += [
        CheckResult(
            "installation",
            f"{name} {installed_version(name)} is installed but registers no plugin in the "
            f"{ENTRY_POINT_GROUP!r} entry-point group",
            f"reinstall it (pip install --force-reinstall {name}) or uninstall it (pip uninstall {name})",
            status="warning",
        )
        for name in strays
    ]
    return checks


def _command_on_path(environ: Mapping[str, str]) -> list[CheckResult]:
    """A warning when the first ``mistralrs`` on PATH is not this project's command."""
    found = shutil.which("mistralrs", path=environ.get("PATH", ""))
    if found is None or _is_ours(found):
        return []
    return [
        CheckResult(
            "installation",
            f"the `mistralrs` command first on PATH ({found}) is not this project's (the Rust engine's "
            "CLI has the same name): `mistralrs doctor` there runs the other program",
            "run this project as `python -m mistralrs_torch`, or put the folder of this environment's "
            "`mistralrs` first on PATH",
            status="warning",
        )
    ]


def _is_ours(path: str) -> bool:
    """Our console script is a small launcher naming mistralrs_torch (at its start, or at its end on Windows)."""
    try:
        with open(path, "rb") as file:
            head = file.read(8192)
            file.seek(max(0, os.fstat(file.fileno()).st_size - 8192))
            tail = file.read(8192)
    except OSError:
        return True  # unreadable: nothing to tell the user with confidence
    return _OUR_SCRIPT_MARK in head or _OUR_SCRIPT_MARK in tail
