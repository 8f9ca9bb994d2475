"""The support matrix: features x platforms x hardware x ops, generated from the installed manifests."""

from __future__ import annotations

from collections.abc import Sequence

from mistralrs_torch.features import OPS, FeatureManifest, InstalledFeature


def hardware_text(m: FeatureManifest) -> str:
    """A feature's hardware and library requirements in words."""
    parts = []
    if m.cpu_archs:
        parts.append(f"{'/'.join(m.cpu_archs)} CPU")
    if m.gpu is not None:
        gpu = m.gpu.label if m.gpu.min_count <= 1 else f"{m.gpu.min_count}+ {m.gpu.label}s"
        low, high = m.gpu.min_compute_capability, m.gpu.below_compute_capability
        if low and high and high == (low[0] + 1, 0):
            gpu += f", compute capability {low[0]}.x"
        elif low:
            gpu += f", compute capability >= {low[0]}.{low[1]}"
        if m.gpu.power_of_two:
            gpu += f", a power of two of them{f' ({m.gpu.count_vars[0]} picks how many)' if m.gpu.count_vars else ''}"
        parts.append(gpu)
    parts += [f"library `{r.name}`" for r in m.libraries]
    parts += [f"module `{r.module}` ({r.distribution})" for r in m.modules]
    if m.auto.min_gpus:
        parts.append(f"auto mode: {m.auto.min_gpus}+ GPUs")
    if m.auto.env_set:
        parts.append(f"auto mode: {' or '.join(m.auto.env_set)} set")
    return "; ".join(parts) or "-"


def support_matrix_markdown(features: Sequence[InstalledFeature]) -> str:
    """The matrix as a Markdown table, one row per feature, in distribution order."""
    rows = sorted(features, key=lambda f: (f.manifest.distribution, -f.manifest.selection_priority))
    header = ["feature", "distribution", "platforms", "hardware and libraries", *OPS, "paged attention",
              "requires", "auto-enables", "excludes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for f in rows:
        m = f.manifest
        cells = [f"`{m.name}`", f"`{m.distribution}`", m.platform_label, hardware_text(m),
                 *("yes" if op in m.provides else "" for op in OPS), m.paged_attention or "",
                 ", ".join(m.requires) or "-", ", ".join(m.auto_enables) or "-", ", ".join(m.excludes) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
