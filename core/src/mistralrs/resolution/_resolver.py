"""Resolution: (installed manifests, selection, system, environment) -> the active set, or every error.

A pure function. Auto mode never produces an invalid set and says why each
left-out feature was left out; an explicit selection that breaks any rule
raises SelectionError listing every violation with its fix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mistralrs._errors import SelectionError, Violation
from mistralrs.features import FeatureManifest
from mistralrs.plugins import GENERIC_CPU, BrokenPlugin, InstalledFeature, PluginInfo
from mistralrs.resolution._rules import Problem, auto_condition_problem, disabled_by, hardware_problems
from mistralrs.resolution._selection import Selection
from mistralrs.system import SystemSnapshot

__all__ = ["STATUSES", "FeatureStatus", "Resolution", "resolve"]

#: Resolution statuses, as list and the JSON output print them.
STATUSES = ("active", "available", "unavailable", "broken")


@dataclass(frozen=True)
class FeatureStatus:
    """Where one feature stands here: status, why, and notes such as the seed's AMD remark for mkl."""

    name: str
    status: str
    plugin: PluginInfo
    manifest: FeatureManifest | None
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Resolution:
    """The outcome of resolving one selection on one system."""

    selection: Selection
    system: SystemSnapshot
    features: tuple[FeatureStatus, ...]

    @property
    def active(self) -> tuple[str, ...]:
        """Names of the active features, in the order of :attr:`features` (by distribution, then priority)."""
        return tuple(f.name for f in self.features if f.status == "active")

    def status(self, name: str) -> FeatureStatus:
        """The status of one feature by name (KeyError if it is not installed)."""
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(name)


def resolve(installed: Sequence[InstalledFeature], broken: Sequence[BrokenPlugin], selection: Selection,
            system: SystemSnapshot, environ: Mapping[str, str]) -> Resolution:
    """Resolve ``selection`` on ``system``; raises SelectionError for an invalid explicit selection."""
    features = {f.manifest.name: f for f in sorted(installed, key=lambda f: (-f.manifest.priority, f.manifest.name))}
    problems = {name: hardware_problems(f.manifest, system) for name, f in features.items()}
    switched_off = {name: disabled_by(f.manifest, environ) for name, f in features.items()}
    if selection.mode == "explicit":
        active, reasons, unavailable = _explicit(selection, features, broken, problems, switched_off)
    else:
        active, reasons, unavailable = _auto(selection, features, problems, switched_off, system, environ)
    statuses = []
    for name, feature in features.items():
        m = feature.manifest
        notes = tuple(note for vendor, note in m.cpu_vendor_notes.items() if vendor == system.cpu.vendor)
        status = "active" if name in active else "unavailable" if name in unavailable else "available"
        statuses.append(FeatureStatus(name, status, feature.plugin, m, tuple(reasons.get(name, ())), notes))
    # Shown grouped by distribution (the built-in "mistralrs" first), highest priority first within one.
    statuses.sort(key=lambda f: (f.plugin.distribution, -f.manifest.priority if f.manifest else 0))
    for plugin in broken:
        for name in plugin.features or ("",):
            statuses.append(FeatureStatus(name, "broken", plugin.plugin, None, (f"{plugin.error}: {plugin.fix}",)))
    return Resolution(selection, system, tuple(statuses))


def _auto(selection: Selection, features: Mapping[str, InstalledFeature], problems: Mapping[str, list[Problem]],
          switched_off: Mapping[str, str | None], system: SystemSnapshot,
          environ: Mapping[str, str]) -> tuple[set[str], dict[str, list[str]], set[str]]:
    reasons: dict[str, list[str]] = {}
    for name, found in problems.items():
        if found:
            reasons[name] = [str(p) for p in found]
        elif switched_off[name]:
            reasons[name] = [f"{name} is turned off by {switched_off[name]}: unset it to use {name}"]
    runnable = {n for n in features if n not in reasons}
    _drop_unmet_requires(features, runnable, reasons, "unavailable here")
    unavailable = set(features) - runnable
    if selection.mode == "none":
        for name in runnable - {GENERIC_CPU.name}:
            reasons[name] = [f"not selected ({selection.source} selects the generic CPU backend alone)"]
        return {GENERIC_CPU.name} & runnable, reasons, unavailable
    wanted = set()
    for name in runnable:
        why = auto_condition_problem(features[name].manifest, system, environ)
        if why:
            reasons[name] = [why]
        else:
            wanted.add(name)
    wanted |= {dep for name in wanted for dep in features[name].manifest.auto_enables if dep in runnable}
    active: set[str] = set()
    for name in features:  # highest priority first
        if name not in wanted:
            continue
        rival = next((other for other in active if _exclusive(features, name, other)), None)
        if rival is None:
            active.add(name)
            reasons[name] = ["all requirements hold"]
        else:
            where = features[rival].manifest.preferred_on
            reasons[name] = [f"left out: {rival} is preferred {f'on {where}' if where else 'here'} "
                             f"and {name} and {rival} are mutually exclusive"]
    _drop_unmet_requires(features, active, reasons, "not active")
    return active, reasons, unavailable


def _drop_unmet_requires(features: Mapping[str, InstalledFeature], names: set[str],
                         reasons: dict[str, list[str]], state: str) -> None:
    changed = True
    while changed:
        changed = False
        for name in sorted(names):
            missing = [d for d in features[name].manifest.requires if d not in names]
            if missing:
                names.discard(name)
                dep = missing[0]
                why = reasons.get(dep, [f"no installed plugin provides {dep}"])[0] if dep in features else \
                    f"no installed plugin provides it: {features[name].manifest.install_hints.get(dep, f'install a plugin that provides {dep}')}"
                reasons[name] = [f"requires {dep}, which is {state} ({why})"]
                changed = True


def _exclusive(features: Mapping[str, InstalledFeature], a: str, b: str) -> bool:
    return b in features[a].manifest.excludes or a in features[b].manifest.excludes


def _explicit(selection: Selection, features: Mapping[str, InstalledFeature], broken: Sequence[BrokenPlugin],
              problems: Mapping[str, list[Problem]],
              switched_off: Mapping[str, str | None]) -> tuple[set[str], dict[str, list[str]], set[str]]:
    violations: list[Violation] = []
    broken_owner = {name: b for b in broken for name in b.features}
    chosen: dict[str, str] = {}  # feature -> why it is in the set
    queue = [(name, f"selected by {selection.source}") for name in (*selection.features, GENERIC_CPU.name)]
    while queue:
        name, why = queue.pop(0)
        if name in chosen:
            continue
        if name not in features:
            violations.append(_missing(name, features, broken_owner))
            continue
        chosen[name] = why
        queue += [(dep, f"auto-enabled by {name}") for dep in features[name].manifest.auto_enables]
    for name in chosen:
        m = features[name].manifest
        for p in problems[name]:
            violations.append(Violation(name, p.rule, p.message, p.fix))
        if switched_off[name]:
            violations.append(Violation(name, "disabled-by", f"{name} and {switched_off[name]} contradict each other",
                                        f"unset {switched_off[name].split('=')[0]} or remove the {name} feature"))
        for dep in m.requires:
            if dep not in chosen:
                hint = "" if dep in features else f" ({m.install_hints.get(dep, f'install a plugin that provides {dep}')})"
                violations.append(Violation(name, "requires", f"{name} requires {dep}", f"add {dep}{hint}"))
    names = list(chosen)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if _exclusive(features, a, b):
                winner = max((a, b), key=lambda n: features[n].manifest.priority)
                where = features[winner].manifest.preferred_on
                violations.append(Violation(a, "excludes", f"{a} and {b} are mutually exclusive",
                                            "enable one" + (f" (on {where}, {winner})" if where else "")))
    if violations:
        raise SelectionError(violations, selection.source)
    reasons = {name: [why] for name, why in chosen.items()}
    for name in features:
        if name not in chosen:
            reasons[name] = [str(p) for p in problems[name]] or [f"not selected by {selection.source}"]
    return set(chosen), reasons, {name for name in features if name not in chosen and problems[name]}


def _missing(name: str, features: Mapping[str, InstalledFeature], broken_owner: Mapping[str, BrokenPlugin]) -> Violation:
    if name in broken_owner:
        b = broken_owner[name]
        return Violation(name, "broken", f"{name} is provided by plugin {b.plugin.name!r} ({b.plugin.distribution}), "
                         f"which is broken ({b.error})", f"reinstall {b.plugin.distribution}, or remove {name}")
    import difflib  # only for this error: it costs milliseconds at every start-up

    close = difflib.get_close_matches(name, list(features), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return Violation(name, "unknown", f"no installed plugin provides feature {name!r}",
                     f"{hint}installed features: {', '.join(sorted(features))}")
