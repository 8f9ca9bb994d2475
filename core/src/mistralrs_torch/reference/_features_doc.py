"""docs/features.md: the users' features reference, generated from the installed manifests.

Every message it quotes is produced here by the same rules the CLI runs, on the
shipped system profiles, so the reference cannot quote a message the code does
not print.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence

from mistralrs_torch._errors import SelectionError
from mistralrs_torch._settings import CORE_ENV_VARS
from mistralrs_torch.features import InstalledFeature, catalogue, seed_packages
from mistralrs_torch.reference._matrix import hardware_text
from mistralrs_torch.resolution import Selection, recommend, resolve
from mistralrs_torch.resolution._rules import hardware_problems
from mistralrs_torch.system import PROFILE_NAMES, hardware_classes, load_system

_INTRO = """# Features reference

This is mistralrs's counterpart of mistral.rs's cargo features reference. Each
hardware feature is a plugin you install with pip; `mistralrs plugins list`
shows what is installed and active here, `mistralrs doctor` checks and verifies
it. This file is generated from the installed manifests by
`mistralrs plugins reference` (a test fails when it drifts); every message it
quotes is printed by the code exactly so.
"""


def _seed_names() -> str:
    """Why the seed's package names are not ours, with the names from the catalogue."""
    seed = [p.seed for p in seed_packages()]
    example = next(p.seed for p in seed_packages() if p.seed_features)
    return (f"The seed's Python package table maps onto these distributions as below. The seed's names\n"
            f"({', '.join(f'`{name}`' for name in seed)}) are the Rust engine's own Python\n"
            f"bindings on PyPI: `pip install {example}` installs that project, not this one. Ours end in\n"
            "`-torch` so that no pip command can pick up theirs, and both can live in one environment (their\n"
            "import package is `mistralrs`, ours `mistralrs_torch`).")


def _code(text: str) -> str:
    """A Markdown code span that may itself contain backticks."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _messages(feature: str, installed: Sequence[InstalledFeature]) -> list[str]:
    """'profile: message: fix' for each distinct problem the feature has on a shipped profile."""
    manifest = next(f.manifest for f in installed if f.manifest.name == feature)
    seen: dict[str, str] = {}
    for profile in PROFILE_NAMES:
        for problem in hardware_problems(manifest, load_system(profile)):
            key = f"{problem.rule}:{problem.message.split(';')[0]}"
            seen.setdefault(key, f"`--system {profile}`: {_code(str(problem))}")
    return list(seen.values())


def _selection_errors(features: tuple[str, ...], profile: str, installed: Sequence[InstalledFeature],
                      environ: dict[str, str] | None = None) -> list[str]:
    try:
        resolve(installed, (), Selection("explicit", features, "--features"), load_system(profile), environ or {})
    except SelectionError as exc:
        return [str(v) for v in exc.violations]
    return []


_RECOMMENDATION_RULES = """A machine falls into one base row of the seed's table (its NVIDIA GPUs' generation, the
GPU of a Mac, or its CPU) and into the rows that add to it (several NVIDIA GPUs; a multi-node run, when a launcher
starts ranks on several machines or the multi-node feature's variable is set); a feature a later row adds replaces one
it excludes. `mistralrs doctor` prints this for the machine it runs on (or `--system`), with or without the plugins
installed, and one pip command for what is missing. Below, each shipped profile under the last row it falls into."""


def _recommendation_rows(installed: Sequence[InstalledFeature]) -> list[tuple[str, ...]]:
    """One row per seed row and distinct recommendation, with the profiles that get it."""
    rows: list[tuple[str, ...]] = []
    for row in catalogue().rows:
        # A row no profile falls into by its hardware (multi-node) is shown on the first profile, with its variable.
        environ = {} if any(hardware_classes(load_system(p))[-1] == row.hardware_class for p in PROFILE_NAMES) \
            else dict.fromkeys(row.when_set, "set")
        groups: dict[tuple[str, str], list[str]] = {}
        for profile in PROFILE_NAMES:
            if hardware_classes(load_system(profile), environ)[-1] != row.hardware_class:
                continue
            resolution = resolve(installed, (), Selection(), load_system(profile), environ)
            found = recommend(resolution, environ)
            names = " ".join(found.names) or "(no features needed)"
            names += "".join(f"; optional: {f.name} ({f.note})" for f in found.optional)
            install = f"`pip install {' '.join(found.distributions)}`" if found.distributions else "-"
            groups.setdefault((names, install), []).append(profile)
            if environ:
                break
        seed = " ".join(row.features) + (f" (plus {row.plus})" if row.plus else "") or "(no features needed)"
        for (names, install), profiles in groups.items():
            where = ", ".join(f"`{p}`" for p in profiles) + "".join(f" with {v} set" for v in environ)
            rows.append((row.label, seed, where, names, install))
            seed = "(same row)"
    return rows


def _conflict_examples(installed: Sequence[InstalledFeature]) -> list[tuple[tuple[str, ...], str, dict[str, str]]]:
    """(features, profile, environment) for each pair of features that exclude each other, each feature that
    requires another it does not turn on, each single-platform feature, and each switch that turns one off: on
    the first profile where as much of the selection as possible can run."""
    manifests = {f.manifest.name: f.manifest for f in installed}
    names = list(manifests)
    selections = [tuple(sorted((a, b))) for i, a in enumerate(names) for b in names[i + 1:]
                  if b in manifests[a].excludes or a in manifests[b].excludes]
    selections += [(m.name,) for m in manifests.values() if set(m.requires) - set(m.auto_enables)]
    examples: list[tuple[tuple[str, ...], str, dict[str, str]]] = []
    for selected in selections:
        profile = max(PROFILE_NAMES, key=lambda p: (sum(not hardware_problems(manifests[n], load_system(p))
                                                        for n in selected), -PROFILE_NAMES.index(p)))
        examples.append((selected, profile, {}))
    for m in manifests.values():
        if len(m.platforms) == 1:
            profile = next(p for p in PROFILE_NAMES if load_system(p).os not in m.platforms)
            examples.append(((m.name,), profile, {}))
        for var in m.disabled_by:
            profile = next((p for p in PROFILE_NAMES if not hardware_problems(m, load_system(p))), PROFILE_NAMES[0])
            examples.append(((m.name,), profile, {var: "1"}))
    return examples


def features_reference_markdown(installed: Sequence[InstalledFeature]) -> str:
    features = sorted(installed, key=lambda f: (f.manifest.distribution, -f.manifest.selection_priority))
    lines = [_INTRO, "## Quick reference", ""]
    lines += _table(["Feature", "Description", "Platform", "Requires", "Package"],
                    [(f"`{f.manifest.name}`", f.manifest.summary, f.manifest.platform_label,
                      ", ".join(f.manifest.requires) or "-", f"`{f.manifest.distribution}`") for f in features])
    for f in features:
        m = f.manifest
        lines += ["", f"## {m.name}", "", f"{m.summary}.", ""]
        lines.append(f"- Install: `pip install {m.distribution}`" if m.distribution != "mistralrs-torch"
                     else "- Built in: always active, at the lowest priority.")
        lines.append(f"- Select: `mistralrs plugins resolve --features {m.name}` or `MISTRALRS_FEATURES={m.name}`")
        lines.append(f"- Platforms: {m.platform_label}")
        lines.append(f"- Requires: {', '.join(m.requires) or 'nothing'}"
                     + (f"; auto-enables {', '.join(m.auto_enables)}" if m.auto_enables else "")
                     + (f"; excludes {', '.join(m.excludes)}" if m.excludes else ""))
        lines.append(f"- Hardware and libraries: {hardware_text(m)}")
        lines.append(
            f"- Enables: {', '.join(m.provides)}"
            + (
                "; paged attention "
                + ("on by default" if m.paged_attention == "default"
                   else "opt-in (--paged-attn or MISTRALRS_PAGED_ATTN=1)")
                if m.paged_attention
                else ""
            )
        )
        if m.env_vars:
            lines += ["", *_table(["Variable", "Meaning"], [(f"`{v.name}`", v.description) for v in m.env_vars])]
        for v in (v for v in m.env_vars if v.fields):
            lines += ["", f"The file that `{v.name}` names holds one JSON object with these fields:", ""]
            lines += _table(
                ["Field", "Description"],
                [(f"`{f.name}`", f.description + ("" if f.required else " (optional)")) for f in v.fields],
            )
        if m.rules:
            lines += ["", "Rules:", "", *(f"- {rule}" for rule in m.rules)]
        notes = [
            f"on {vendor.upper() if len(vendor) <= 3 else vendor} CPUs: {note}"
            for vendor, note in m.cpu_vendor_notes.items()
        ]
        messages = _messages(m.name, installed)
        if messages or notes:
            lines += ["", "When it cannot run here, `mistralrs plugins list` says:", ""]
            lines += [f"- {message}" for message in messages] + [f"- note {note}" for note in notes]
    lines += ["", "## Recommended combinations by hardware", "", _RECOMMENDATION_RULES, ""]
    lines += _table(
        ["Hardware (the seed's row)", "The seed recommends", "Machine (`--system`)", "mistralrs recommends", "Install"],
        _recommendation_rows(installed),
    )
    lines += ["", "## Python packages", ""]
    by_dist: dict[str, list[str]] = {}
    for f in features:
        by_dist.setdefault(f.manifest.distribution, []).append(f.manifest.name)
    lines += _table(
        ["Package", "Features", "Also installs"],
        [
            (f"`{dist}`", " ".join(names), " ".join(f"`{d}`" for d in _brings_in(dist)) or "-")
            for dist, names in by_dist.items()
        ],
    )
    lines += ["", _seed_names(), ""]
    lines += _table(
        ["Seed package", "This project", "Features it gives you", "For"],
        [
            (
                f"`{p.seed}`",
                f"`{p.distribution}`",
                " ".join(n for d in (p.distribution, *_brings_in(p.distribution)) for n in by_dist.get(d, ())),
                p.purpose,
            )
            for p in seed_packages()
        ],
    )
    lines += ["", "## Environment variables of the core", ""]
    lines += _table(["Variable", "Meaning"], [(f"`{k}`", v) for k, v in CORE_ENV_VARS.items()])
    lines += ["", "## Troubleshooting", "", "Conflicting features, as `--features` reports them:", ""]
    for selected, profile, environ in _conflict_examples(installed):
        shown = "".join(f"{k}={v} " for k, v in environ.items())
        lines += [
            f'- `{shown}--system {profile} --features "{" ".join(selected)}"`: {_code(e)}'
            for e in _selection_errors(selected, profile, installed, environ)
        ]
    lines += ["", "Missing libraries and modules:", ""]
    seen = set()
    for f in features:
        for r in f.manifest.libraries:
            if r.missing not in seen:
                seen.add(r.missing)
                lines.append(f"- {_code(f'{r.missing}: {r.fix}')}")
        for q in f.manifest.modules:
            lines.append(f"- {_code(f'{q.distribution} is not installed (module {q.module} not found): {q.install}')}")
    lines += [
        "",
        "Run `mistralrs doctor` first: it shows the detected hardware, the installed libraries, each feature's "
        "status with its reason, configuration problems, and verifies every active backend.",
        "",
    ]
    return "\n".join(lines)


def _brings_in(distribution: str) -> list[str]:
    try:
        requirements = importlib.metadata.requires(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    names = [r.split(";")[0].split("==")[0].split(">=")[0].strip() for r in requirements]
    return [n for n in names if n.startswith("mistralrs-torch-")]
