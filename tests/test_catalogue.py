"""The seed's catalogue (the one data file naming plugins in the core) against the installed manifests, and the
recommendation doctor builds from it for every row of the seed's table, with every plugin installed or only the core.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from mistralrs_torch import PluginManager, Selection, SystemSnapshot, load_system, resolve
from mistralrs_torch.doctor import run_doctor
from mistralrs_torch.features import catalogue
from mistralrs_torch.resolution import NOT_INSTALLED, Recommendation, recommend
from mistralrs_torch.system import PROFILE_NAMES

RING = {"RING_CONFIG": "/etc/ring/rank0.json"}
TORCHRUN_TWO_NODES = {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "10.0.0.1",
                      "MASTER_PORT": "29500"}

#: Every row of the seed's "Recommended Combinations by Hardware", reproduced from a shipped profile:
#: (profile, environment, the seed's row, what mistralrs recommends there).
SEED_ROWS = [
    ("a100", {}, "NVIDIA Ampere+ (RTX 30/40, A100)", "cuda cudnn flash-attn"),
    ("rtx4090-windows", {}, "NVIDIA Ampere+ (RTX 30/40, A100)", "cuda cudnn flash-attn"),
    ("h100", {}, "NVIDIA Hopper (H100)", "cuda cudnn flash-attn-v3"),
    ("h100-fa2", {}, "NVIDIA Hopper (H100)", "cuda cudnn flash-attn-v3"),
    ("v100", {}, "NVIDIA older GPUs", "cuda cudnn"),
    ("apple-m2", {}, "Apple Silicon", "metal accelerate"),
    ("intel-mac-amd", {}, "Apple Silicon", "metal accelerate"),  # metal: "Apple Silicon or AMD GPU"
    ("xeon-cpu", {}, "Intel CPU", "mkl"),
    ("epyc-cpu", {}, "Generic CPU", ""),  # AMD CPUs: mkl only as an option, with the seed's note
    ("multi-gpu-4xa100", {}, "Multi-GPU NVIDIA", "cuda cudnn flash-attn nccl"),
    # On Hopper the multi-GPU row adds nccl to the Hopper row: flash-attn-v3, never its rival flash-attn.
    ("multi-gpu-8xh100", {}, "Multi-GPU NVIDIA", "cuda cudnn flash-attn-v3 nccl"),
    ("epyc-cpu", RING, "Multi-node/cross-platform", "ring"),
    ("a100", RING, "Multi-node/cross-platform", "cuda cudnn flash-attn ring"),  # "ring (plus GPU features)"
    ("xeon-cpu", TORCHRUN_TWO_NODES, "Multi-node/cross-platform", "mkl ring"),
    # ring, configured for the run, replaces the multi-GPU row's nccl (they exclude each other).
    ("multi-gpu-8xh100", RING, "Multi-node/cross-platform", "cuda cudnn flash-attn-v3 ring"),
]


def _recommend(manager: PluginManager, profile: str | SystemSnapshot, environ: Mapping[str, str]) -> Recommendation:
    system = load_system(profile) if isinstance(profile, str) else profile
    return recommend(resolve(manager.features, manager.broken, Selection(), system, environ), environ)


@pytest.fixture(scope="module")
def everything() -> PluginManager:
    return PluginManager(environ={})


@pytest.fixture(scope="module")
def core_only() -> PluginManager:
    """A machine with only the core installed: no plugin but the built-in generic CPU one."""
    return PluginManager(entry_points=[], environ={})


# --- the catalogue against the installed manifests ------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests(everything):
    return {f.manifest.name: f.manifest for f in everything.features if f.manifest.name != "cpu"}


def test_the_catalogue_lists_exactly_the_installed_in_repo_features(manifests) -> None:
    assert set(catalogue().features) == set(manifests)


@pytest.mark.parametrize("name", sorted(catalogue().features))
def test_each_catalogue_feature_agrees_with_its_manifest(manifests, name) -> None:
    entry, manifest = catalogue().features[name], manifests[name]
    assert entry.distribution == manifest.distribution
    assert set(entry.excludes) == set(manifest.excludes)
    assert entry.modules == manifest.modules
    assert dict(entry.cpu_vendor_notes) == dict(manifest.cpu_vendor_notes)
    assert set(manifest.recommended_for) == {row.hardware_class for row in catalogue().rows if name in row.features}


def test_rows_that_add_to_the_machine_say_what_they_add() -> None:
    rows = {row.hardware_class: row for row in catalogue().rows}
    assert [r.hardware_class for r in rows.values() if r.is_base] == [
        "nvidia-ampere", "nvidia-hopper", "nvidia-older", "apple-silicon", "intel-cpu", "generic-cpu"]
    # The seed's multi-GPU row is the Ampere row plus nccl.
    multi = rows["multi-gpu-nvidia"]
    assert set(multi.features) - set(multi.adds) == set(rows["nvidia-ampere"].features)
    for row in rows.values():
        assert set(row.adds) <= set(row.features) and set(row.optional) <= set(catalogue().features)


def test_the_multi_node_rows_variables_are_those_that_turn_its_feature_on(manifests) -> None:
    for row in catalogue().rows:
        assert set(row.when_set) == {v for name in row.adds for v in manifests[name].auto.env_set}
    assert catalogue().row("multi-node").when_set == ("RING_CONFIG",)


# --- every row of the seed's table, from a profile -------------------------------------------------------------------


@pytest.mark.parametrize(("profile", "environ", "label", "expected"), SEED_ROWS,
                         ids=[f"{p}{'+' + ','.join(e) if e else ''}" for p, e, _, _ in SEED_ROWS])
def test_every_seed_row_is_reproduced_from_a_profile(everything, core_only, profile, environ, label, expected) -> None:
    for manager in (everything, core_only):
        recommendation = _recommend(manager, profile, environ)
        assert label == recommendation.labels[-1]
        assert " ".join(recommendation.names) == expected


def test_every_shipped_profile_reproduces_some_row() -> None:
    assert {p for p, *_ in SEED_ROWS} == set(PROFILE_NAMES)
    assert {label for _, _, label, _ in SEED_ROWS} == {row.label for row in catalogue().rows}


@pytest.mark.parametrize(("profile", "environ", "label", "expected"), SEED_ROWS,
                         ids=[f"{p}{'+' + ','.join(e) if e else ''}" for p, e, _, _ in SEED_ROWS])
def test_with_only_the_core_one_pip_command_installs_every_distribution_needed(core_only, profile, environ, label,
                                                                               expected) -> None:
    recommendation = _recommend(core_only, profile, environ)
    assert all(f.status == NOT_INSTALLED for f in recommendation.features)
    wanted = list(dict.fromkeys(catalogue().features[name].distribution for name in expected.split()))
    assert recommendation.install == (f"pip install {' '.join(wanted)}" if wanted else "")


@pytest.mark.parametrize("profile", PROFILE_NAMES)
@pytest.mark.parametrize("environ", [{}, RING, TORCHRUN_TWO_NODES], ids=["plain", "ring", "torchrun"])
def test_excluded_rivals_are_never_recommended_together(everything, core_only, profile, environ) -> None:
    for manager in (everything, core_only):
        names = _recommend(manager, profile, environ).names
        assert not [(a, b) for a in names for b in names if b in catalogue().features[a].excludes]


@pytest.mark.parametrize("profile", ["a100", "h100", "v100", "multi-gpu-4xa100", "multi-gpu-8xh100", "apple-m2",
                                     "intel-mac-amd", "xeon-cpu"])
def test_with_every_plugin_installed_the_recommended_features_are_what_auto_mode_activates(everything, profile) -> None:
    recommendation = _recommend(everything, profile, {})
    assert [f.status for f in recommendation.features] == ["active"] * len(recommendation.features)
    assert recommendation.install == ""


def test_hopper_without_flash_attention_3_says_why_and_how_while_flash_attn_stands_in(everything, core_only) -> None:
    installed = {f.name: f for f in _recommend(everything, "h100-fa2", {}).features}
    assert installed["flash-attn-v3"].status == "unavailable"
    assert "module flash_attn_interface not found" in installed["flash-attn-v3"].reason
    assert "flash-attention/hopper" in installed["flash-attn-v3"].reason
    assert "meanwhile flash-attn is active" in installed["flash-attn-v3"].reason
    # With only the core: pip installs the plugin, and FlashAttention-3 is built from source.
    missing = {f.name: f for f in _recommend(core_only, "h100-fa2", {}).features}["flash-attn-v3"]
    assert missing.status == NOT_INSTALLED and missing.distribution == "mistralrs-torch-flash-attn"
    assert "flash_attn_3 is not installed (module flash_attn_interface not found)" in missing.reason
    assert missing.fix.startswith("git clone https://github.com/Dao-AILab/flash-attention")
    assert {f.name: f for f in _recommend(core_only, "h100", {}).features}["flash-attn-v3"].fix == ""


def test_amd_cpus_get_the_generic_cpu_row_with_mkl_as_an_option_and_the_seed_note(everything, core_only) -> None:
    for manager, status in ((everything, "active"), (core_only, NOT_INSTALLED)):
        recommendation = _recommend(manager, "epyc-cpu", {})
        assert recommendation.labels == ("Generic CPU",) and recommendation.names == ()
        (mkl,) = recommendation.optional
        assert (mkl.name, mkl.status, mkl.distribution) == ("mkl", status, "mistralrs-torch-mkl")
        assert "Intel-optimized" in mkl.note
    assert _recommend(everything, "xeon-cpu", {}).optional == ()


def test_three_gpus_recommend_nccl_with_the_fix_auto_mode_needs(everything, profile_json) -> None:
    data = profile_json("multi-gpu-4xa100")
    data["gpus"] = data["gpus"][:3]
    nccl = {f.name: f for f in _recommend(everything, SystemSnapshot.from_json(data), {}).features}["nccl"]
    assert nccl.status == "unavailable"
    assert "MISTRALRS_MN_LOCAL_WORLD_SIZE=2" in nccl.reason


def test_a_third_party_plugin_recommending_itself_joins_the_rows_it_names(fake_plugin) -> None:
    entry = fake_plugin("""
        from mistralrs_torch import FeatureManifest, hookimpl

        @hookimpl
        def mistralrs_features():
            return (FeatureManifest(name="chunky", summary="a CPU attention", distribution="fake-chunky",
                                    provides=("attention",), recommended_for=("intel-cpu",)),)
        """, name="chunky")
    manager = PluginManager(entry_points=[entry], environ={})
    assert _recommend(manager, "xeon-cpu", {}).names == ("mkl", "chunky")
    assert "chunky" not in _recommend(manager, "a100", {}).names


# --- doctor ----------------------------------------------------------------------------------------------------------


def _recommendation_text(report) -> str:
    return "\n".join(f"{c.subject}: {c.message} | {c.fix}" for c in report.sections["recommendation"])


def test_doctor_on_hopper_with_only_the_core_says_what_to_install(core_only) -> None:
    report = run_doctor(environ={}, system=load_system("h100"), verify=False, manager=core_only)
    text = _recommendation_text(report)
    assert "NVIDIA Hopper (H100): recommended features: cuda cudnn flash-attn-v3" in text
    (install,) = [c for c in report.sections["recommendation"] if c.subject == "install"]
    assert install.fix == "pip install mistralrs-torch-cuda mistralrs-torch-flash-attn"
    assert report.exit_code == 0


def test_doctor_with_everything_installed_says_all_active_and_prints_no_install(everything) -> None:
    report = run_doctor(environ={}, system=load_system("h100"), verify=False, manager=everything)
    (hardware,) = report.sections["recommendation"]
    assert hardware.status == "ok" and hardware.message.endswith("cuda cudnn flash-attn-v3 (all active)")


def test_doctor_does_not_call_a_disabled_plugin_missing() -> None:
    environ = {"MISTRALRS_DISABLE_PLUGINS": "cuda"}
    report = run_doctor(environ=environ, system=load_system("a100"), verify=False)
    checks = {c.subject: c for c in report.sections["recommendation"]}
    assert checks["cuda"].message.startswith("not loaded: its plugin 'cuda' is disabled by MISTRALRS_DISABLE_PLUGINS")
    assert checks["cuda"].fix == "remove cuda from MISTRALRS_DISABLE_PLUGINS"
    assert "install" not in checks
    report = run_doctor(environ={"MISTRALRS_PLUGIN_AUTOLOAD": "0"}, system=load_system("xeon-cpu"), verify=False)
    checks = {c.subject: c for c in report.sections["recommendation"]}
    assert "MISTRALRS_PLUGIN_AUTOLOAD=0" in checks["mkl"].message and "install" not in checks
