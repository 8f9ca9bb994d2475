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
from mistralrs_torch.features import seed_packages
from mistralrs_torch.plugins import InstalledFeature
from mistralrs_torch.reference._matrix import hardware_text
from mistralrs_torch.resolution import Selection, resolve
from mistralrs_torch.resolution._rules import hardware_problems
from mistralrs_torch.system import HARDWARE_CLASSES, PROFILE_NAMES, load_system

__all__ = ["features_reference_markdown"]

_INTRO = """# Features reference

This is mistralrs's counterpart of mistral.rs's cargo features reference. Each
hardware feature is a plugin you install with pip; `mistralrs plugins list`
shows what is installed and active here, `mistralrs doctor` checks and verifies
it. This file is generated from the installed manifests by
`mistralrs plugins reference` (a test fails when it drifts); every message it
quotes is printed by the code exactly so.
"""

_SEED_NAMES = """The seed's Python package table maps onto these distributions as below. The seed's names
(`mistralrs`, `mistralrs-cuda`, `mistralrs-metal`, `mistralrs-mkl`) are the Rust engine's own Python
bindings on PyPI: `pip install mistralrs-cuda` installs that project, not this one. Ours end in
`-torch` so that no pip command can pick up theirs, and both can live in one environment (their
import package is `mistralrs`, ours `mistralrs_torch`)."""


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
            seen.setdefault(f"{problem.rule}:{problem.message.split(';')[0]}", f"`--system {profile}`: {_code(str(problem))}")
    return list(seen.values())


def _selection_errors(features: tuple[str, ...], profile: str, installed: Sequence[InstalledFeature],
                      environ: dict[str, str] | None = None) -> list[str]:
    try:
        resolve(installed, (), Selection("explicit", features, "--features"), load_system(profile), environ or {})
    except SelectionError as exc:
        return [str(v) for v in exc.violations]
    return []


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
        lines.append(f"- Enables: {', '.join(m.provides)}"
                     + (f"; paged attention {'on by default' if m.paged_attention == 'default' else 'opt-in (--paged-attn or MISTRALRS_PAGED_ATTN=1)'}"
                        if m.paged_attention else ""))
        if m.env_vars:
            lines += ["", *_table(["Variable", "Meaning"], [(f"`{v.name}`", v.description) for v in m.env_vars])]
        notes = [f"on {vendor.upper() if len(vendor) <= 3 else vendor} CPUs: {note}" for vendor, note in m.cpu_vendor_notes.items()]
        messages = _messages(m.name, installed)
        if messages or notes:
            lines += ["", "When it cannot run here, `mistralrs plugins list` says:", ""]
            lines += [f"- {message}" for message in messages] + [f"- note {note}" for note in notes]
    lines += ["", "## Recommended combinations by hardware", ""]
    rows = []
    for name, (label, _) in HARDWARE_CLASSES.items():
        wanted = [f for f in features if name in f.manifest.recommended_for]
        names = " ".join(f.manifest.name for f in wanted if f.manifest.name != "cpu") or "(no features needed)"
        packages = sorted({f.manifest.distribution for f in wanted})
        rows.append((label, names, f"`pip install {' '.join(packages)}`" if packages else "-"))
    lines += _table(["Hardware", "Recommended features", "Install"], rows)
    lines += ["", "Where two recommended features exclude each other (flash-attn and flash-attn-v3 on a multi-GPU "
              "Hopper box), auto mode keeps the one with priority and `mistralrs doctor` recommends only it.", "",
              "## Python packages", ""]
    by_dist: dict[str, list[str]] = {}
    for f in features:
        by_dist.setdefault(f.manifest.distribution, []).append(f.manifest.name)
    lines += _table(["Package", "Features", "Also installs"],
                    [(f"`{dist}`", " ".join(names), " ".join(f"`{d}`" for d in _brings_in(dist)) or "-")
                     for dist, names in by_dist.items()])
    lines += ["", _SEED_NAMES, ""]
    lines += _table(["Seed package", "This project", "Features it gives you", "For"],
                    [(f"`{p.seed}`", f"`{p.distribution}`",
                      " ".join(n for d in (p.distribution, *_brings_in(p.distribution)) for n in by_dist.get(d, ())),
                      p.purpose) for p in seed_packages()])
    lines += ["", "## Environment variables of the core", ""]
    lines += _table(["Variable", "Meaning"], [(f"`{k}`", v) for k, v in CORE_ENV_VARS.items()])
    lines += ["", "## Troubleshooting", "", "Conflicting features, as `--features` reports them:", ""]
    conflicts = [(("flash-attn", "flash-attn-v3"), "h100"), (("metal", "cuda"), "h100"), (("cudnn",), "h100"),
                 (("metal",), "xeon-cpu")]
    for selected, profile in conflicts:
        if all(any(f.manifest.name == s for f in features) for s in selected):
            lines += [f"- `--system {profile} --features \"{' '.join(selected)}\"`: {_code(e)}"
                      for e in _selection_errors(selected, profile, installed)]
    if any(f.manifest.disabled_by for f in features):
        for f in features:
            for var in f.manifest.disabled_by:
                lines += [f"- `{var}=1 ... --features {f.manifest.name}`: {_code(e)}" for e in
                          _selection_errors((f.manifest.name,), "multi-gpu-8xh100", installed, {var: "1"})
                          if var in e]
    lines += ["", "Missing libraries and modules:", ""]
    seen = set()
    for f in features:
        for r in f.manifest.libraries:
            if r.missing not in seen:
                seen.add(r.missing)
                lines.append(f"- {_code(f'{r.missing}: {r.fix}')}")
        for r in f.manifest.modules:
            lines.append(f"- {_code(f'{r.distribution} is not installed (module {r.module} not found): {r.install}')}")
    lines += ["", "Run `mistralrs doctor` first: it shows the detected hardware, the installed libraries, each feature's "
              "status with its reason, configuration problems, and verifies every active backend.", ""]
    return "\n".join(lines)


def _brings_in(distribution: str) -> list[str]:
    try:
        requirements = importlib.metadata.requires(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    names = [r.split(";")[0].split("==")[0].split(">=")[0].strip() for r in requirements]
    return [n for n in names if n.startswith("mistralrs-torch-")]
