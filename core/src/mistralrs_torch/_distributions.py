"""A fast reader of installed distributions and their entry points.

``importlib.metadata`` costs about 45 ms to import here (it pulls in email,
zipfile and pathlib) before it scans anything; `mistralrs plugins list` must
start in about twice the time of importing click. Installed distributions are
``NAME-VERSION.dist-info`` folders on sys.path, so listing those folders and
reading the ``entry_points.txt`` of each gives the same answer for a fraction.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class PluginEntryPoint:
    """An entry point with the name and version of the distribution that declares it."""

    name: str
    value: str
    distribution: str
    version: str

    def load(self) -> object:
        """Import the entry point's module and return it, or the attribute after ':'."""
        module_name, _, attribute = self.value.partition(":")
        target: object = importlib.import_module(module_name.strip())
        for part in filter(None, attribute.strip().split(".")):
            target = getattr(target, part)
        return target


def _normalise(name: str) -> str:
    # PEP 503 normalisation without the regex engine (start-up matters here).
    return name.lower().replace("-", "_").replace(".", "_")


@lru_cache(maxsize=1)
def _installed() -> dict[str, tuple[str, str]]:
    """normalised distribution name -> (version, metadata folder), first on sys.path wins.

    Wheels install ``NAME-VERSION.dist-info``; ``setup.py install`` (how FlashAttention-3 is built) leaves
    ``NAME-VERSION-pyX.Y.egg-info`` beside the package, or a ``NAME-VERSION-pyX.Y.egg`` folder on sys.path.
    """
    found: dict[str, tuple[str, str]] = {}
    for folder in sys.path:
        if folder.endswith(".egg"):
            name, _, version = os.path.basename(folder)[: -len(".egg")].partition("-")
            found.setdefault(_normalise(name), (version.partition("-")[0], os.path.join(folder, "EGG-INFO")))
            continue
        try:
            entries = os.scandir(folder or ".")
        except OSError:
            continue
        with entries:
            for entry in entries:
                if entry.name.endswith((".dist-info", ".egg-info")):
                    name, _, version = entry.name.rsplit(".", 1)[0].partition("-")
                    found.setdefault(_normalise(name), (version.partition("-")[0], entry.path))
    return found


def installed_version(*names: str) -> str | None:
    """The installed version of the first of these distributions that is installed, or None.

    The one version lookup of mistralrs and its plugins: no ``importlib.metadata``, whose import alone
    costs tens of milliseconds of every start-up.
    """
    hits = (_installed().get(_normalise(name)) for name in names)
    return next((hit[0] for hit in hits if hit is not None), None)


def installed_names() -> tuple[str, ...]:
    """Normalised names of every installed distribution."""
    return tuple(_installed())


def distribution_record(name: str) -> tuple[str, list[tuple[str, str]]] | None:
    """(the folder RECORD paths are relative to, [(path, "sha256=..." or "")]) of an installed distribution.

    None when the distribution is not installed; an empty list when its RECORD is missing.
    """
    hit = _installed().get(_normalise(name))
    if hit is None:
        return None
    rows = []
    try:
        with open(os.path.join(hit[1], "RECORD"), encoding="utf-8") as file:
            for line in file:
                # RECORD is CSV, but paths with commas are quoted; the last two fields never hold one.
                fields = line.rstrip("\n").rsplit(",", 2)
                if len(fields) == 3 and fields[0]:
                    rows.append((fields[0].strip('"'), fields[1]))
    except OSError:
        pass
    return os.path.dirname(hit[1]), rows


def plugin_entry_points(group: str) -> Iterator[PluginEntryPoint]:
    """Every entry point of ``group`` declared by an installed distribution."""
    for version, folder in _installed().values():
        try:
            with open(os.path.join(folder, "entry_points.txt"), encoding="utf-8") as file:
                text = file.read()
        except OSError:
            continue
        if f"[{group}]" not in text:
            continue
        distribution = _metadata_field(folder, "Name") or os.path.basename(folder).partition("-")[0]
        section = ""
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("["):
                section = line[1:-1].strip()
            elif section == group and "=" in line and not line.startswith(("#", ";")):
                name, _, value = line.partition("=")
                yield PluginEntryPoint(name.strip(), value.strip(), distribution, version)


def _metadata_field(folder: str, field: str) -> str:
    """One header field of a METADATA file (headers end at the first blank line)."""
    try:
        with open(os.path.join(folder, "METADATA"), encoding="utf-8") as file:
            for line in file:
                if line.startswith(f"{field}:"):
                    return line[len(field) + 1:].strip()
                if not line.strip():
                    break
    except OSError:
        pass
    return ""
