"""What the seed recommends for a machine, installed or not: the features to use, who carries them, how to get them.

A pure function of a resolution (the machine, detected or ``--system``, and the
installed features' statuses), the environment and the seed's catalogue. The
machine's base row of the seed's table gives the features; the rows that add to
it (several NVIDIA GPUs, a multi-node run) add theirs, and a feature a later row
adds replaces one it excludes. Installed plugins that recommend themselves for
the same hardware (``recommended_for``) join unless a recommended feature
excludes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mistralrs_torch.features import GENERIC_CPU, catalogue
from mistralrs_torch.resolution._resolver import Resolution
from mistralrs_torch.resolution._rules import module_problem
from mistralrs_torch.system import hardware_classes

#: The status of a recommended feature no installed plugin provides.
NOT_INSTALLED = "not installed"


@dataclass(frozen=True)
class RecommendedFeature:
    """One feature the seed recommends here (or mentions as optional) and where it stands.

    ``status`` is a resolution status (active, available, unavailable, broken) or
    "not installed"; ``reason`` says why it is not active and ``fix`` what, besides
    installing ``distribution``, it still needs ("" when nothing).
    """

    name: str
    distribution: str
    status: str
    reason: str = ""
    fix: str = ""
    #: For an optional feature: the catalogue's note for this CPU ("works on AMD but Intel-optimized").
    note: str = ""


@dataclass(frozen=True)
class Recommendation:
    """The seed's rows this machine falls into, the features they recommend, and optional ones."""

    rows: tuple[str, ...]
    labels: tuple[str, ...]
    features: tuple[RecommendedFeature, ...]
    optional: tuple[RecommendedFeature, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def distributions(self) -> tuple[str, ...]:
        """Every distribution carrying a recommended feature, in recommendation order."""
        return tuple(dict.fromkeys(f.distribution for f in self.features))

    @property
    def missing_distributions(self) -> tuple[str, ...]:
        """The distributions to install: those carrying a recommended feature that is not installed."""
        return tuple(dict.fromkeys(f.distribution for f in self.features if f.status == NOT_INSTALLED))

    @property
    def install(self) -> str:
        """One pip command installing every recommended feature that is missing ("" when none is)."""
        missing = self.missing_distributions
        return f"pip install {' '.join(missing)}" if missing else ""


def recommend(resolution: Resolution, environ: Mapping[str, str],
              not_loaded: Mapping[str, tuple[str, str]] | None = None) -> Recommendation:
    """The seed's recommendation for ``resolution.system`` in ``environ``.

    ``not_loaded`` maps installed distributions whose plugins were not loaded (disabled) to why and the fix,
    so that they are not called missing.
    """
    table = catalogue()
    classes = hardware_classes(resolution.system, environ)
    rivals = {name: set(f.excludes) for name, f in table.features.items()}
    for f in resolution.features:
        if f.manifest is not None:
            rivals.setdefault(f.name, set()).update(f.manifest.excludes)

    def exclusive(a: str, b: str) -> bool:
        return b in rivals.get(a, ()) or a in rivals.get(b, ())

    wanted: list[str] = []
    for row in (table.row(c) for c in classes):
        for name in row.features if row.is_base else row.adds:
            wanted = [w for w in wanted if not exclusive(w, name)]  # a later row's feature wins
            if name not in wanted:
                wanted.append(name)
    for f in resolution.features:  # plugins the catalogue does not know, recommending themselves here
        if (f.manifest is not None and f.name not in table.features and f.name != GENERIC_CPU.name
                and set(f.manifest.recommended_for) & set(classes) and not any(exclusive(w, f.name) for w in wanted)):
            wanted.append(f.name)
    features = tuple(_where(name, resolution, not_loaded or {}) for name in wanted)
    optional = []
    for row in (table.row(c) for c in classes):
        for name in row.optional:
            note = table.features[name].cpu_vendor_notes.get(resolution.system.cpu.vendor)
            if note and name not in wanted:
                optional.append(_where(name, resolution, not_loaded or {}, note))
    return Recommendation(classes, tuple(table.row(c).label for c in classes), features, tuple(optional))


def _where(name: str, resolution: Resolution, not_loaded: Mapping[str, tuple[str, str]],
           note: str = "") -> RecommendedFeature:
    """Where one recommended feature stands here: its installed status, or what installing it takes."""
    installed = next((f for f in resolution.features if f.name == name), None)
    if installed is not None:
        distribution = installed.plugin.distribution
        if installed.status == "active":
            return RecommendedFeature(name, distribution, "active", note=note)
        reason = installed.reasons[0] if installed.reasons else ""
        rival = next((f.name for f in resolution.features if f.status == "active" and f.manifest is not None
                      and name in f.manifest.excludes), None)
        if installed.status == "unavailable" and rival:
            reason += f" (meanwhile {rival} is active)"
        return RecommendedFeature(name, distribution, installed.status, reason, note=note)
    entry = catalogue().features[name]
    if entry.distribution in not_loaded:
        return RecommendedFeature(name, entry.distribution, "not loaded", *not_loaded[entry.distribution], note=note)
    # pip installs the distribution; what it cannot install (FlashAttention-3 is built from source) is said here.
    problems = [module_problem(name, m) for m in entry.modules if m.module not in resolution.system.modules]
    return RecommendedFeature(name, entry.distribution, NOT_INSTALLED,
                              "; ".join(f"it also needs what pip cannot install: {p.message}" for p in problems),
                              "; ".join(p.fix for p in problems), note)
