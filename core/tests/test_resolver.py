"""The resolver on synthetic manifests: every rule is manifest data, evaluated generically.

No real plugin is involved here; the features are invented (alpha, beta...)
so these tests show the core never needs to know a plugin by name.
"""

from __future__ import annotations

import pytest

from mistralrs_torch import (
    GPU,
    AutoCondition,
    BrokenPlugin,
    ConfigError,
    FeatureManifest,
    GPURequirement,
    InstalledFeature,
    LibraryRequirement,
    ManifestError,
    ModuleRequirement,
    PluginInfo,
    Selection,
    SelectionError,
    SystemSnapshot,
    load_system,
    resolve,
)
from mistralrs_torch.features import GENERIC_CPU
from mistralrs_torch.resolution import STATUSES
from mistralrs_torch.system import CPU

PLUGIN = PluginInfo("synthetic", "synthetic-dist", "1.0", "synthetic.plugin")
BUILTIN = PluginInfo("builtin", "mistralrs-torch", "0", "mistralrs_torch.plugins._builtin")


def _installed(*manifests: FeatureManifest) -> list[InstalledFeature]:
    return [InstalledFeature(GENERIC_CPU, BUILTIN), *(InstalledFeature(m, PLUGIN) for m in manifests)]


def _m(name: str, **kwargs) -> FeatureManifest:
    return FeatureManifest(name=name, summary=f"{name} feature", distribution="synthetic-dist", **kwargs)


def _system(**kwargs) -> SystemSnapshot:
    values = dict(source="synthetic", os="linux", arch="x86_64", cpu=CPU(model="x", vendor="intel", cores=4))
    values.update(kwargs)
    return SystemSnapshot(**values)


def _nvidia(*ccs: tuple[int, int]) -> tuple[GPU, ...]:
    return tuple(GPU(index=i, name=f"GPU{i}", vendor="nvidia", compute_capability=cc) for i, cc in enumerate(ccs))


def _explicit(*names: str) -> Selection:
    return Selection(mode="explicit", features=names, source="--features")


def _reasons(resolution, name) -> str:
    return " | ".join(resolution.status(name).reasons)


def test_with_nothing_installed_but_the_builtin_cpu_is_active() -> None:
    resolution = resolve(_installed(), [], Selection(), _system(), {})
    assert resolution.active == ("cpu",)
    assert [f.status for f in resolution.features] == ["active"]


def test_statuses_are_the_four_documented_strings() -> None:
    assert STATUSES == ("active", "available", "unavailable", "broken")


def test_higher_priority_wins_an_exclusion_and_the_loser_says_why() -> None:
    features = _installed(_m("alpha", excludes=("beta",), selection_priority=10, preferred_on="Zen"),
                          _m("beta", excludes=("alpha",), selection_priority=5))
    resolution = resolve(features, [], Selection(), _system(), {})
    assert set(resolution.active) == {"alpha", "cpu"}
    assert resolution.status("beta").status == "available"
    assert "alpha is preferred on Zen" in _reasons(resolution, "beta")


def test_an_exclusion_declared_on_one_side_only_still_holds() -> None:
    features = _installed(_m("alpha", selection_priority=10), _m("beta", excludes=("alpha",), selection_priority=5))
    resolution = resolve(features, [], Selection(), _system(), {})
    assert set(resolution.active) == {"alpha", "cpu"}
    with pytest.raises(SelectionError):
        resolve(features, [], _explicit("alpha", "beta"), _system(), {})


def test_every_installed_feature_gets_exactly_one_status() -> None:
    features = _installed(_m("low", selection_priority=1), _m("high", selection_priority=99),
                          _m("mid", selection_priority=50))
    resolution = resolve(features, [], Selection(), _system(), {})
    assert sorted(f.name for f in resolution.features) == ["cpu", "high", "low", "mid"]
    assert set(resolution.active) == {"cpu", "high", "low", "mid"}


def test_a_platform_rule_gives_one_clear_reason() -> None:
    features = _installed(_m("macfeat", platforms=("macos",), gpu=GPURequirement("apple"),
                             libraries=(LibraryRequirement("mps", "no MPS", "get a Mac"),)))
    resolution = resolve(features, [], Selection(), _system(), {})
    assert resolution.status("macfeat").reasons == ("macfeat is macOS-only: remove the macfeat feature",)


def test_a_gpu_count_rule() -> None:
    features = _installed(_m("multi", gpu=GPURequirement("nvidia", min_count=4)))
    two = resolve(features, [], Selection(), _system(gpus=_nvidia((8, 0), (8, 0))), {})
    assert two.status("multi").status == "unavailable"
    assert "needs 4 NVIDIA GPUs; 2 visible" in _reasons(two, "multi")
    four = resolve(features, [], Selection(), _system(gpus=_nvidia(*[(8, 0)] * 4)), {})
    assert four.status("multi").status == "active"


def test_a_compute_capability_window_reports_the_first_gpu_outside_it() -> None:
    features = _installed(_m("hopperonly", gpu=GPURequirement("nvidia", min_compute_capability=(9, 0),
                                                              below_compute_capability=(10, 0),
                                                              newer_gpu_fix="use the other one")))
    old = resolve(features, [], Selection(), _system(gpus=_nvidia((9, 0), (8, 6))), {})
    assert "GPU 1 (GPU1) has 8.6" in _reasons(old, "hopperonly")
    new = resolve(features, [], Selection(), _system(gpus=_nvidia((12, 0),)), {})
    assert "needs compute capability 9.x; GPU 0 (GPU0) has 12.0: use the other one" in _reasons(new, "hopperonly")
    ok = resolve(features, [], Selection(), _system(gpus=_nvidia((9, 0), (9, 0))), {})
    assert ok.status("hopperonly").status == "active"


def test_cpu_flag_requirements_are_judged_from_the_snapshot_profiles_included() -> None:
    features = _installed(_m("wide", cpu_flags=("avx512f", "amx_tile")))
    narrow = resolve(features, [], Selection(), _system(cpu=CPU(model="Zen 3", vendor="amd", cores=8,
                                                                flags=("avx2", "avx512f"))), {})
    assert narrow.status("wide").status == "unavailable"
    assert _reasons(narrow, "wide") == ("wide needs the CPU instruction set(s) amx_tile, which this CPU (Zen 3) "
                                        "lacks: run on a CPU with amx_tile, or remove the wide feature")
    with pytest.raises(SelectionError, match="amx_tile"):
        resolve(features, [], _explicit("wide"), narrow.system, {})
    assert resolve(_installed(_m("avx2ish", cpu_flags=("avx2",))), [], Selection(), load_system("epyc-cpu"),
                   {}).status("avx2ish").status == "active"
    assert resolve(_installed(_m("bf16ish", cpu_flags=("avx512_bf16",))), [], Selection(), load_system("xeon-cpu"),
                   {}).status("bf16ish").status == "unavailable"


def test_cpu_flags_must_be_lower_case_names() -> None:
    with pytest.raises(ManifestError, match="cpu_flags"):
        _m("shouty", cpu_flags=("AVX2",))


def test_library_module_and_cpu_arch_rules() -> None:
    features = _installed(_m("needy", cpu_archs=("x86_64",),
                             libraries=(LibraryRequirement("libfoo", "libfoo not found", "install libfoo"),),
                             modules=(ModuleRequirement("foo_kernels", "foo-kernels", "pip install foo-kernels"),)))
    bare = resolve(features, [], Selection(), _system(arch="arm64"), {})
    reasons = bare.status("needy").reasons
    assert any("x86_64" in r and "arm64" in r for r in reasons)
    assert "libfoo not found: install libfoo" in reasons
    assert any("foo-kernels is not installed" in r and "pip install foo-kernels" in r for r in reasons)
    full = resolve(features, [], Selection(), _system(libraries={"libfoo": "1"}, modules={"foo_kernels": "2"}), {})
    assert full.status("needy").status == "active"


def test_requires_chains_propagate_the_root_cause() -> None:
    features = _installed(_m("base", libraries=(LibraryRequirement("libbase", "libbase not found", "get it"),)),
                          _m("middle", requires=("base",)), _m("top", requires=("middle",)))
    resolution = resolve(features, [], Selection(), _system(), {})
    assert {f.name: f.status for f in resolution.features} == {
        "cpu": "active", "base": "unavailable", "middle": "unavailable", "top": "unavailable"}
    assert "libbase not found" in _reasons(resolution, "middle")
    assert _reasons(resolution, "top").startswith("requires middle")


def test_a_requirement_no_plugin_provides_uses_the_install_hint() -> None:
    features = _installed(_m("addon", requires=("engine",), install_hints={"engine": "pip install engine-plugin"}))
    resolution = resolve(features, [], Selection(), _system(), {})
    assert resolution.status("addon").status == "unavailable"
    assert "pip install engine-plugin" in _reasons(resolution, "addon")
    with pytest.raises(SelectionError) as caught:
        resolve(features, [], _explicit("addon"), _system(), {})
    expected = "addon requires engine: add engine (pip install engine-plugin)"
    assert [str(v) for v in caught.value.violations] == [expected]


def test_auto_enables_adds_and_explicit_requires_demands() -> None:
    features = _installed(
        _m("engine"), _m("turbo", requires=("engine",), auto_enables=("engine",)), _m("strict", requires=("engine",))
    )
    assert set(resolve(features, [], _explicit("turbo"), _system(), {}).active) == {"turbo", "engine", "cpu"}
    with pytest.raises(SelectionError) as caught:
        resolve(features, [], _explicit("strict"), _system(), {})
    assert [(v.subject, v.rule) for v in caught.value.violations] == [("strict", "requires")]


def test_auto_conditions_leave_a_runnable_feature_available_and_apply_only_in_auto_mode() -> None:
    features = _installed(
        _m("envgated", auto=AutoCondition(env_set=("GATE_VAR",))),
        _m("gpugated", gpu=GPURequirement("nvidia"), auto=AutoCondition(min_gpus=2)),
    )
    system = _system(gpus=_nvidia((8, 0)))
    resolution = resolve(features, [], Selection(), system, {})
    assert resolution.status("envgated").status == "available"
    assert "GATE_VAR" in _reasons(resolution, "envgated")
    assert resolution.status("gpugated").status == "available"
    assert set(resolve(features, [], Selection(), system, {"GATE_VAR": "x"}).active) == {"envgated", "cpu"}
    assert set(resolve(features, [], _explicit("envgated", "gpugated"), system, {}).active) == {
        "envgated",
        "gpugated",
        "cpu",
    }


def test_disabled_by_switches_a_feature_off_and_contradicts_an_explicit_choice() -> None:
    features = _installed(_m("switchable", disabled_by=("NO_SWITCHABLE",)))
    off = resolve(features, [], Selection(), _system(), {"NO_SWITCHABLE": "yes"})
    assert off.status("switchable").status == "unavailable"
    assert "NO_SWITCHABLE=yes" in _reasons(off, "switchable")
    assert resolve(features, [], Selection(), _system(), {"NO_SWITCHABLE": "0"}).status("switchable").status == "active"
    with pytest.raises(SelectionError, match="contradict each other"):
        resolve(features, [], _explicit("switchable"), _system(), {"NO_SWITCHABLE": "1"})
    with pytest.raises(ConfigError):
        resolve(features, [], Selection(), _system(), {"NO_SWITCHABLE": "perhaps"})


def test_a_feature_that_cannot_run_is_unavailable_whatever_the_mode() -> None:
    # Switched off, or requiring something that is missing: unavailable in explicit mode too, with the same reason.
    features = _installed(
        _m("switchable", disabled_by=("NO_SWITCHABLE",)), _m("needy", requires=("absent",)), _m("chosen")
    )
    environ = {"NO_SWITCHABLE": "1"}
    auto = resolve(features, [], Selection(), _system(), environ)
    explicit = resolve(features, [], _explicit("chosen"), _system(), environ)
    for name in ("switchable", "needy"):
        assert auto.status(name).status == explicit.status(name).status == "unavailable"
        assert auto.status(name).reasons == explicit.status(name).reasons
    assert explicit.status("chosen").status == "active"


def test_cpu_vendor_notes_show_only_on_that_vendor() -> None:
    features = _installed(_m("tuned", cpu_vendor_notes={"amd": "tuned for Intel"}))
    amd = resolve(features, [], Selection(), _system(cpu=CPU(vendor="amd")), {})
    assert amd.status("tuned").notes == ("tuned for Intel",)
    intel = resolve(features, [], Selection(), _system(), {})
    assert intel.status("tuned").notes == ()


def test_broken_plugins_show_as_broken_features() -> None:
    dead = PluginInfo("dead", "dead-dist", "0.1", "dead.plugin")
    broken = [
        BrokenPlugin(dead, "import", "SystemExit: 3"),
        BrokenPlugin(PluginInfo("half", "half-dist", "0.2", "half"), "hook x", "boom", ("f1", "f2")),
    ]
    resolution = resolve(_installed(), broken, Selection(), _system(), {})
    statuses = [(f.name, f.status, f.plugin.name) for f in resolution.features if f.status == "broken"]
    assert statuses == [("", "broken", "dead"), ("f1", "broken", "half"), ("f2", "broken", "half")]
    dead_reason = " ".join(next(f for f in resolution.features if f.plugin.name == "dead").reasons)
    assert "SystemExit: 3" in dead_reason and "MISTRALRS_DISABLE_PLUGINS=dead" in dead_reason
    assert resolution.active == ("cpu",)


def test_status_of_an_unknown_feature_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        resolve(_installed(), [], Selection(), _system(), {}).status("nope")


def test_resolution_is_pure() -> None:
    features = _installed(
        _m("alpha", excludes=("beta",), selection_priority=2), _m("beta", excludes=("alpha",), selection_priority=1)
    )
    environ = {"X": "1"}
    first = resolve(features, [], Selection(), _system(), environ)
    second = resolve(list(reversed(features)), [], Selection(), _system(), dict(environ))
    assert first == second
    assert environ == {"X": "1"}
