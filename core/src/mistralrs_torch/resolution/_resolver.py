"""Resolution: (installed manifests, selection, system, environment) -> the active set, or every error.

A pure function. Auto mode never produces an invalid set and says why each
left-out feature was left out; an explicit selection that breaks any rule
raises SelectionError listing every violation with its fix.

Auto mode: the features that can run here and whose auto conditions hold are
wanted, with everything they auto-enable (transitively); then, highest
priority first (ties by name), each wanted feature goes in together with
everything it requires, or stays out with the reason: something it requires
is not wanted, or an active feature excludes it or one of its requirements.
So the active set is closed under requires, has no two exclusive features,
and a feature is only ever left out for a rival that is active.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mistralrs_torch._errors import Problem, SelectionError
from mistralrs_torch.features import GENERIC_CPU, BrokenPlugin, FeatureManifest, InstalledFeature, PluginInfo
from mistralrs_torch.resolution._rules import (
    auto_condition_problem,
    disabled_by,
    gpu_count_problem,
    hardware_problems,
)
from mistralrs_torch.resolution._selection import Selection
from mistralrs_torch.system import SystemSnapshot
from mistralrs_torch.validation import did_you_mean, shown

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
    # Highest priority first, then by name: every later choice follows this order, so the outcome (and the
    # wording of each reason) depends on nothing else, neither input order nor hash seeds.
    features = {
        f.manifest.name: f for f in sorted(installed, key=lambda f: (-f.manifest.selection_priority, f.manifest.name))
    }
    problems = {name: hardware_problems(f.manifest, system) for name, f in features.items()}
    switched_off = {name: disabled_by(f.manifest, environ) for name, f in features.items()}
    for name, f in features.items():  # how many GPUs: judged only where it could run on the GPUs there are
        count = None if problems[name] or switched_off[name] else gpu_count_problem(f.manifest, system, environ)
        problems[name] += [count] if count else []
    reasons, unrunnable = _unrunnable(features, problems, switched_off)
    if selection.mode == "explicit":
        active = _explicit(selection, features, broken, problems, switched_off, reasons, unrunnable)
    else:
        active = _auto(selection, features, reasons, unrunnable, system, environ)
    statuses = []
    for name, feature in features.items():
        m = feature.manifest
        notes = tuple(note for vendor, note in m.cpu_vendor_notes.items() if vendor == system.cpu.vendor)
        status = "active" if name in active else "unavailable" if name in unrunnable else "available"
        statuses.append(FeatureStatus(name, status, feature.plugin, m, tuple(reasons.get(name, ())), notes))
    # Shown grouped by distribution (the built-in "mistralrs" first), highest priority first within one.
    statuses.sort(key=lambda f: (f.plugin.distribution, -f.manifest.selection_priority if f.manifest else 0))
    for plugin in broken:
        for name in plugin.features or ("",):
            statuses.append(
                FeatureStatus(
                    name, "broken", plugin.plugin, None, (f"broken at {plugin.stage}: {plugin.error}: {plugin.fix}",)
                )
            )
    return Resolution(selection, system, tuple(statuses))


def _unrunnable(
    features: Mapping[str, InstalledFeature],
    problems: Mapping[str, list[Problem]],
    switched_off: Mapping[str, str | None],
) -> tuple[dict[str, list[str]], frozenset[str]]:
    """The features that cannot run here whatever is selected (hardware, switched off, or needing one of those),
    and why: the reasons every mode starts from."""
    reasons: dict[str, list[str]] = {}
    for name, found in problems.items():
        if found:
            reasons[name] = [str(p) for p in found]
        elif switched_off[name]:
            reasons[name] = [f"{name} is turned off by {switched_off[name]}: unset it to use {name}"]
    runnable = {n for n in features if n not in reasons}
    _drop_unmet_requires(features, runnable, reasons, "unavailable here")
    return reasons, frozenset(features) - runnable


def _auto(
    selection: Selection,
    features: Mapping[str, InstalledFeature],
    reasons: dict[str, list[str]],
    unrunnable: frozenset[str],
    system: SystemSnapshot,
    environ: Mapping[str, str],
) -> set[str]:
    runnable = [n for n in features if n not in unrunnable]
    if selection.mode == "none":
        for name in runnable:
            if name != GENERIC_CPU.name:
                reasons[name] = [f"not selected ({selection.source} selects the generic CPU backend alone)"]
        return {GENERIC_CPU.name} & set(runnable)
    wanted = set()
    for name in runnable:
        why = auto_condition_problem(features[name].manifest, system, environ)
        if why:
            reasons[name] = [why]
        else:
            wanted.add(name)
    # What a wanted feature turns on is wanted too, however far the chain goes (as in explicit mode).
    queue = list(wanted)
    while queue:
        for dep in features[queue.pop()].manifest.auto_enables:
            if dep in features and dep not in unrunnable and dep not in wanted:
                wanted.add(dep)
                queue.append(dep)
    # Greedy by priority: a feature goes in together with everything it requires, or not at all, so a feature
    # is only ever left out for a rival that is active, and the active set is always closed under requires.
    active: set[str] = set()
    for name in features:
        if name not in wanted or name in active:
            continue
        needed = _requires_closure(features, name)
        lacking = next((dep for dep in needed if dep not in wanted), None)
        if lacking is not None:
            why = reasons.get(lacking, ["nothing turns it on here"])[0]
            reasons[name] = [f"requires {lacking}, which is not active ({why})"]
            continue
        group = (name, *needed)
        inner = next(((a, b) for i, a in enumerate(group) for b in group[i + 1 :] if _exclusive(features, a, b)), None)
        if inner is not None:  # a manifest set that contradicts itself: say so rather than pick a side
            reasons[name] = [
                f"left out: {name} needs {inner[0]} and {inner[1]} together, which are mutually exclusive"
                if inner[0] != name
                else f"left out: {name} requires {inner[1]}, and the two are mutually exclusive"
            ]
            continue
        rival = next(
            (
                (member, other)
                for member in group
                for other in features
                if other in active and _exclusive(features, member, other)
            ),
            None,
        )
        if rival is None:
            for member in group:
                if member not in active:
                    active.add(member)
                    reasons[member] = ["all requirements hold"]
            continue
        member, other = rival
        where = features[other].manifest.preferred_on
        via = "" if member == name else f" (through {member}, which it requires)"
        reasons[name] = [
            f"left out: {other} is preferred {f'on {where}' if where else 'here'} "
            f"and {member} and {other} are mutually exclusive{via}"
        ]
    return active


def _requires_closure(features: Mapping[str, InstalledFeature], name: str) -> list[str]:
    """Every feature runnable ``name`` requires, directly or not, in resolution order (all installed: a feature
    requiring a missing one is unrunnable and never gets here)."""
    found: set[str] = set()
    queue = [name]
    while queue:
        for dep in features[queue.pop()].manifest.requires:
            if dep not in found and dep != name:
                found.add(dep)
                queue.append(dep)
    return [n for n in features if n in found]


def _drop_unmet_requires(
    features: Mapping[str, InstalledFeature], names: set[str], reasons: dict[str, list[str]], state: str
) -> None:
    changed = True
    while changed:
        changed = False
        for name in sorted(names):
            missing = [d for d in features[name].manifest.requires if d not in names]
            if missing:
                names.discard(name)
                dep = missing[0]
                why = (
                    reasons.get(dep, [f"no installed plugin provides {dep}"])[0]
                    if dep in features
                    else "no installed plugin provides it: "
                    + features[name].manifest.install_hints.get(dep, f"install a plugin that provides {dep}")
                )
                reasons[name] = [f"requires {dep}, which is {state} ({why})"]
                changed = True


def _exclusive(features: Mapping[str, InstalledFeature], a: str, b: str) -> bool:
    return b in features[a].manifest.excludes or a in features[b].manifest.excludes


def _explicit(
    selection: Selection,
    features: Mapping[str, InstalledFeature],
    broken: Sequence[BrokenPlugin],
    problems: Mapping[str, list[Problem]],
    switched_off: Mapping[str, str | None],
    reasons: dict[str, list[str]],
    unrunnable: frozenset[str],
) -> set[str]:
    violations: list[Problem] = []
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
        violations += problems[name]
        if off := switched_off[name]:
            violations.append(
                Problem(
                    name,
                    f"{name} and {off} contradict each other",
                    f"unset {off.split('=')[0]} or remove the {name} feature",
                    rule="disabled-by",
                )
            )
        for dep in m.requires:
            if dep not in chosen:
                hint = (
                    "" if dep in features else f" ({m.install_hints.get(dep, f'install a plugin that provides {dep}')})"
                )
                violations.append(Problem(name, f"{name} requires {dep}", f"add {dep}{hint}", rule="requires"))
    names = list(chosen)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if _exclusive(features, a, b):
                winner = max((a, b), key=lambda n: features[n].manifest.selection_priority)
                where = features[winner].manifest.preferred_on
                violations.append(
                    Problem(
                        a,
                        f"{a} and {b} are mutually exclusive",
                        "enable one" + (f" (on {where}, {winner})" if where else ""),
                        rule="excludes",
                    )
                )
    if violations:
        raise SelectionError(violations, selection.source)
    for name in features:
        if name in chosen:
            reasons[name] = [chosen[name]]
        elif name not in unrunnable:
            reasons[name] = [f"not selected by {selection.source}"]
    return set(chosen)


def _missing(
    name: str, features: Mapping[str, InstalledFeature], broken_owner: Mapping[str, BrokenPlugin]
) -> Problem:
    if name in broken_owner:
        b = broken_owner[name]
        return Problem(
            name,
            f"{name} is provided by plugin {b.plugin.name!r} ({b.plugin.distribution}), which is broken ({b.error})",
            f"reinstall {b.plugin.distribution}, or remove {name}",
            rule="broken",
        )
    close = did_you_mean(name, features)
    hint = f"did you mean {close!r}? " if close else ""
    return Problem(
        name,
        f"no installed plugin provides feature {shown(name)}",
        f"{hint}installed features: {', '.join(sorted(features))}",
        rule="unknown",
    )
