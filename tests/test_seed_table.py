"""The seed document's tables, checked against the installed manifests as a whole."""

from __future__ import annotations

import pytest

from mistralrs_torch import load_system
from mistralrs_torch.features import catalogue
from mistralrs_torch.system import HARDWARE_CLASSES

#: The seed's "Quick Reference": feature -> (platforms, requires)
QUICK_REFERENCE = {
    "cuda": ({"linux", "windows"}, set()),
    "cudnn": ({"linux", "windows"}, {"cuda"}),
    "flash-attn": ({"linux", "windows"}, {"cuda"}),
    "flash-attn-v3": ({"linux", "windows"}, {"cuda"}),
    "metal": ({"macos"}, set()),
    "accelerate": ({"macos"}, set()),
    "mkl": ({"linux", "windows"}, set()),
    "nccl": ({"linux"}, {"cuda"}),
    "ring": (set(), set()),  # "All": an empty platform list means every platform
}

#: The seed's "Recommended Combinations by Hardware" (label -> features).
RECOMMENDED = {
    "NVIDIA Ampere+ (RTX 30/40, A100)": {"cuda", "cudnn", "flash-attn"},
    "NVIDIA Hopper (H100)": {"cuda", "cudnn", "flash-attn-v3"},
    "NVIDIA older GPUs": {"cuda", "cudnn"},
    "Apple Silicon": {"metal", "accelerate"},
    "Intel CPU": {"mkl"},
    "Generic CPU": set(),
    "Multi-GPU NVIDIA": {"cuda", "cudnn", "flash-attn", "nccl"},
    "Multi-node/cross-platform": {"ring"},
}


@pytest.fixture
def manifests(manager):
    return {f.manifest.name: f.manifest for f in manager.features}


def test_all_nine_seed_features_and_the_generic_cpu_are_installed(manifests, all_features) -> None:
    assert set(manifests) == all_features
    assert set(QUICK_REFERENCE) == all_features - {"cpu"}


@pytest.mark.parametrize("feature", sorted(QUICK_REFERENCE))
def test_quick_reference_rows(manifests, feature) -> None:
    platforms, requires = QUICK_REFERENCE[feature]
    assert set(manifests[feature].platforms) == platforms
    assert set(manifests[feature].requires) == requires


def test_every_exclusion_is_symmetric(manifests) -> None:
    pairs = {(m.name, other) for m in manifests.values() for other in m.excludes}
    assert pairs == {(b, a) for a, b in pairs}
    assert {frozenset(p) for p in pairs} == {frozenset({"flash-attn", "flash-attn-v3"}), frozenset({"metal", "cuda"}),
                                            frozenset({"nccl", "ring"})}


def test_auto_enabled_features_are_the_seeds_automatically_enabled_cuda(manifests) -> None:
    assert {n: m.auto_enables for n, m in manifests.items() if m.auto_enables} == {
        "flash-attn": ("cuda",), "flash-attn-v3": ("cuda",), "nccl": ("cuda",)}


def test_the_catalogue_holds_the_recommended_combinations_table() -> None:
    assert {row.label: set(row.features) for row in catalogue().rows} == RECOMMENDED
    assert set(HARDWARE_CLASSES) == {row.hardware_class for row in catalogue().rows}


@pytest.mark.parametrize("label", sorted(RECOMMENDED))
def test_the_manifests_recommend_themselves_for_the_same_rows(manifests, label) -> None:
    (row,) = [row for row in catalogue().rows if row.label == label]
    recommended = {n for n, m in manifests.items() if row.hardware_class in m.recommended_for and n != "cpu"}
    assert recommended == RECOMMENDED[label]


@pytest.mark.parametrize(("profile", "label"), [
    ("a100", "NVIDIA Ampere+ (RTX 30/40, A100)"),
    ("h100", "NVIDIA Hopper (H100)"),
    ("v100", "NVIDIA older GPUs"),
    ("apple-m2", "Apple Silicon"),
    ("xeon-cpu", "Intel CPU"),
])
def test_auto_mode_activates_the_recommended_combination(resolve_on, profile, label) -> None:
    assert RECOMMENDED[label] <= set(resolve_on(profile).active)


def test_generic_cpu_needs_no_features(resolve_on, manifests) -> None:
    assert "generic-cpu" in manifests["cpu"].recommended_for
    assert "cpu" in resolve_on("epyc-cpu").active
    assert load_system("epyc-cpu").gpus == ()


def test_the_seed_environment_variables_are_declared(manifests) -> None:
    assert {"MISTRALRS_MN_LOCAL_WORLD_SIZE", "MISTRALRS_NO_NCCL"} <= set(manifests["nccl"].env_var_names())
    assert "RING_CONFIG" in manifests["ring"].env_var_names()


def test_the_python_package_table(manager) -> None:
    distributions = {f.manifest.name: f.plugin.distribution for f in manager.features}
    assert distributions["cuda"] == distributions["cudnn"] == "mistralrs-torch-cuda"
    assert distributions["flash-attn"] == distributions["flash-attn-v3"] == "mistralrs-torch-flash-attn"
    assert distributions["metal"] == "mistralrs-torch-metal"
    assert distributions["accelerate"] == "mistralrs-torch-accelerate"
    assert distributions["mkl"] == "mistralrs-torch-mkl"
    assert distributions["cpu"] == "mistralrs-torch"


def test_the_seed_catalogue_maps_each_seed_package_onto_ours_giving_its_features(manager) -> None:
    import importlib.metadata

    from mistralrs_torch.features import seed_packages

    by_dist: dict[str, set[str]] = {}
    for f in manager.features:
        by_dist.setdefault(f.plugin.distribution, set()).add(f.manifest.name)

    def gives(dist: str) -> set[str]:
        brought = [
            r.split("==")[0] for r in importlib.metadata.requires(dist) or [] if r.startswith("mistralrs-torch-")
        ]
        return by_dist.get(dist, set()).union(*(gives(d) for d in brought))

    rows = {p.seed: p for p in seed_packages()}
    assert set(rows) == {"mistralrs", "mistralrs-cuda", "mistralrs-metal", "mistralrs-mkl"}
    for row in rows.values():
        assert row.distribution.startswith("mistralrs-torch") and row.distribution in by_dist
        assert set(row.seed_features) <= gives(row.distribution), row
