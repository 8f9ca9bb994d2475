"""The seed's catalogue as data: its Python packages mapped onto this project's distributions.

The seed's package names (``mistralrs``, ``mistralrs-cuda``, ...) belong to the
Rust engine's own bindings on PyPI; ours carry ``-torch`` so that no pip
command installs theirs for ours, and both can share one environment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

__all__ = ["SeedPackage", "seed_packages"]


@dataclass(frozen=True)
class SeedPackage:
    """One row of the seed's Python package table and the distribution of ours that plays its part."""

    seed: str
    distribution: str
    seed_features: tuple[str, ...]
    purpose: str


@cache
def seed_packages() -> tuple[SeedPackage, ...]:
    data = json.loads(files(__package__).joinpath("seed_catalogue.json").read_text(encoding="utf-8"))
    return tuple(SeedPackage(row["seed"], row["distribution"], tuple(row["seed_features"]), row["for"])
                 for row in data["packages"])
