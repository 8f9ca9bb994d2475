"""The seed's catalogue as data: which distribution carries each feature, what the seed recommends for which
hardware, and its Python packages mapped onto this project's distributions.

It is the one place the core names plugins (tests/test_catalogue.py checks it
against the installed manifests): doctor reads it to tell a machine with only
the core installed what to install. The seed's package names (``mistralrs``,
``mistralrs-cuda``, ...) belong to the Rust engine's own bindings on PyPI; ours
carry ``-torch`` so that no pip command installs theirs for ours, and both can
share one environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType

from mistralrs_torch.features._manifest import ModuleRequirement


@dataclass(frozen=True)
class CatalogueFeature:
    """What the core may know about a feature before its plugin is installed."""

    name: str
    distribution: str
    excludes: tuple[str, ...] = ()
    #: Modules pip cannot install with the distribution (FlashAttention-3 is built from source).
    modules: tuple[ModuleRequirement, ...] = ()
    #: Notes keyed by CPU vendor, as the manifest's ``cpu_vendor_notes``.
    cpu_vendor_notes: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class HardwareRow:
    """One row of the seed's "Recommended Combinations by Hardware" table.

    A base row describes the machine (exactly one applies); a row with ``adds``
    applies on top of it and contributes only those features (the multi-GPU row
    adds nccl to the GPU row's features, the multi-node row ring).
    """

    hardware_class: str
    label: str
    #: The features as the seed's table lists them.
    features: tuple[str, ...]
    adds: tuple[str, ...] = ()
    #: What the seed says comes with it besides ("GPU features").
    plus: str = ""
    #: Features usable on this row's machines but not recommended: shown with their note for this CPU vendor.
    optional: tuple[str, ...] = ()
    #: Environment variables that put a machine in this row when set (RING_CONFIG).
    when_set: tuple[str, ...] = ()

    @property
    def is_base(self) -> bool:
        return not self.adds


@dataclass(frozen=True)
class SeedPackage:
    """One row of the seed's Python package table and the distribution of ours that plays its part."""

    seed: str
    distribution: str
    seed_features: tuple[str, ...]
    purpose: str


@dataclass(frozen=True)
class Catalogue:
    """The whole catalogue file."""

    features: Mapping[str, CatalogueFeature]
    rows: tuple[HardwareRow, ...]
    packages: tuple[SeedPackage, ...]

    def row(self, hardware_class: str) -> HardwareRow:
        return next(r for r in self.rows if r.hardware_class == hardware_class)


@cache
def catalogue() -> Catalogue:
    """The catalogue, read once from ``seed_catalogue.json``."""
    import json  # on first use only: `plugins list` never reads the catalogue
    from importlib.resources import files

    data = json.loads(files(__package__).joinpath("seed_catalogue.json").read_text(encoding="utf-8"))
    features = {row["name"]: CatalogueFeature(
        row["name"], row["distribution"], tuple(row.get("excludes", ())),
        tuple(ModuleRequirement(**m) for m in row.get("modules", ())),
        MappingProxyType(dict(row.get("cpu_vendor_notes", {})))) for row in data["features"]}
    rows = tuple(HardwareRow(row["class"], row["label"], tuple(row["features"]), tuple(row.get("adds", ())),
                             row.get("plus", ""), tuple(row.get("optional", ())), tuple(row.get("when_set", ())))
                 for row in data["hardware"])
    packages = tuple(SeedPackage(row["seed"], row["distribution"], tuple(row["seed_features"]), row["for"])
                     for row in data["packages"])
    return Catalogue(MappingProxyType(features), rows, packages)


def seed_packages() -> tuple[SeedPackage, ...]:
    """The seed's Python package table, mapped onto this project's distributions."""
    return catalogue().packages
