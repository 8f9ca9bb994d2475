"""FeatureManifest and its requirement types: validation at construction, and immutability."""

from __future__ import annotations

import dataclasses

import pytest

from mistralrs_torch import (
    PLUGIN_API_VERSION,
    AutoCondition,
    EnvVar,
    FeatureManifest,
    GPURequirement,
    LibraryRequirement,
    ManifestError,
    ModuleRequirement,
    PluginError,
)
from mistralrs_torch.features import OPS, PLATFORMS


def _manifest(**overrides) -> FeatureManifest:
    values = {"name": "my-feature", "summary": "a feature", "distribution": "my-dist"}
    values.update(overrides)
    return FeatureManifest(**values)


def test_a_minimal_manifest_has_safe_defaults() -> None:
    m = _manifest()
    assert m.requires == m.auto_enables == m.excludes == ()
    assert m.platforms == ()  # every platform
    assert m.platform_label == "all"
    assert m.gpu is None
    assert m.api_version == PLUGIN_API_VERSION
    assert m.selection_priority == 0
    assert m.provides == ()


@pytest.mark.parametrize("name", ["flash-attn", "cuda", "flash-attn-v3", "mkl", "a1", "x-2-y"])
def test_valid_feature_names(name) -> None:
    assert _manifest(name=name).name == name


@pytest.mark.parametrize("name", ["", "Cuda", "flash_attn", "flash attn", "-cuda", "cuda-", "1cuda", "flash--attn",
                                  "CUDA", "cuda!", None, 3])
def test_bad_feature_names_are_rejected(name) -> None:
    with pytest.raises(ManifestError, match="malformed feature manifest"):
        _manifest(name=name)


def test_manifest_error_is_a_plugin_error() -> None:
    assert issubclass(ManifestError, PluginError)


@pytest.mark.parametrize("field", ["summary", "distribution"])
@pytest.mark.parametrize("value", ["", None, 5])
def test_summary_and_distribution_are_required(field, value) -> None:
    with pytest.raises(ManifestError):
        _manifest(**{field: value})


@pytest.mark.parametrize("platforms", [("linux", "beos"), ("Linux",), ("darwin",), "linux", ["linux"], (1,)])
def test_bad_platforms_are_rejected(platforms) -> None:
    with pytest.raises(ManifestError, match="platforms"):
        _manifest(platforms=platforms)


@pytest.mark.parametrize("platforms", [(), ("linux",), ("macos",), ("linux", "windows"), PLATFORMS])
def test_good_platforms_are_accepted(platforms) -> None:
    assert _manifest(platforms=platforms).platforms == platforms


@pytest.mark.parametrize("provides", [("gpu",), ("device", "flux"), "device", ["device"], ("Device",)])
def test_bad_provides_are_rejected(provides) -> None:
    with pytest.raises(ManifestError, match="provides"):
        _manifest(provides=provides)


def test_every_op_kind_can_be_provided() -> None:
    assert _manifest(provides=OPS).provides == OPS
    assert set(OPS) == {"device", "attention", "matmul", "layers", "collectives"}


@pytest.mark.parametrize("attribute", ["requires", "auto_enables", "excludes"])
def test_rule_lists_must_be_tuples_of_names(attribute) -> None:
    with pytest.raises(ManifestError, match=attribute):
        _manifest(**{attribute: ["cuda"]})
    with pytest.raises(ManifestError, match=attribute):
        _manifest(**{attribute: "cuda"})
    with pytest.raises(ManifestError, match=attribute):
        _manifest(**{attribute: (1,)})


@pytest.mark.parametrize("attribute", ["requires", "auto_enables", "excludes"])
def test_a_feature_cannot_name_itself_in_its_rules(attribute) -> None:
    with pytest.raises(ManifestError, match="itself"):
        _manifest(**{attribute: ("my-feature",)})


def test_what_a_feature_auto_enables_it_must_also_require() -> None:
    with pytest.raises(ManifestError, match=r"auto_enables \['cuda'\] must also be in requires.*add them to requires"):
        _manifest(auto_enables=("cuda",))
    assert _manifest(requires=("cuda", "mkl"), auto_enables=("cuda",)).auto_enables == ("cuda",)


def test_nothing_may_exclude_the_always_active_cpu_feature() -> None:
    with pytest.raises(ManifestError, match="excludes the built-in cpu feature, which is always active"):
        _manifest(excludes=("cpu",))


@pytest.mark.parametrize("paged", ["always", "on", "yes"])
def test_bad_paged_attention_modes_are_rejected(paged) -> None:
    with pytest.raises(ManifestError, match="paged_attention"):
        _manifest(paged_attention=paged)


@pytest.mark.parametrize("paged", ["", "default", "opt-in"])
def test_paged_attention_modes(paged) -> None:
    assert _manifest(paged_attention=paged).paged_attention == paged


@pytest.mark.parametrize(("field", "value"), [
    ("gpu", "nvidia"),
    ("auto", {"min_gpus": 2}),
    ("selection_priority", "high"),
    ("libraries", ("mkl",)),
    ("modules", ("flash_attn",)),
    ("env_vars", ("RING_CONFIG",)),
    ("api_version", 1.0),
])
def test_wrongly_typed_fields_are_rejected(field, value) -> None:
    with pytest.raises(ManifestError):
        _manifest(**{field: value})


@pytest.mark.parametrize("kwargs", [
    {"vendor": "intel"},
    {"vendor": "apple", "other_vendors": ("intel",)},
    {"vendor": "nvidia", "count_vars": ("lower_case",)},
    {"vendor": "nvidia", "min_count": -1},
    {"vendor": "nvidia", "min_count": "2"},
    {"vendor": "nvidia", "min_compute_capability": (8,)},
    {"vendor": "nvidia", "min_compute_capability": [8, 0]},
    {"vendor": "nvidia", "min_compute_capability": (8.0, 0)},
    {"vendor": "nvidia", "below_compute_capability": "10.0"},
])
def test_bad_gpu_requirements_are_rejected(kwargs) -> None:
    with pytest.raises(ManifestError):
        GPURequirement(**kwargs)


def test_a_gpu_window_is_accepted() -> None:
    gpu = GPURequirement("nvidia", min_compute_capability=(9, 0), below_compute_capability=(10, 0))
    assert _manifest(gpu=gpu).gpu == gpu


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "", "missing": "x", "fix": "y"},
        {"name": "mkl", "missing": "", "fix": "y"},
        {"name": "mkl", "missing": "x", "fix": ""},
    ],
)
def test_library_requirements_need_a_message_and_a_fix(kwargs) -> None:
    with pytest.raises(ManifestError):
        LibraryRequirement(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"module": "", "distribution": "d", "install": "pip install d"},
        {"module": "m", "distribution": "", "install": "pip install d"},
        {"module": "m", "distribution": "d", "install": ""},
    ],
)
def test_module_requirements_need_how_to_install(kwargs) -> None:
    with pytest.raises(ManifestError):
        ModuleRequirement(**kwargs)


@pytest.mark.parametrize("name", ["ring_config", "Ring", "1VAR", "", "MY-VAR"])
def test_environment_variable_names_are_upper_case(name) -> None:
    with pytest.raises(ManifestError):
        EnvVar(name, "x")


def test_manifests_are_frozen() -> None:
    m = _manifest(cpu_vendor_notes={"amd": "note"}, install_hints={"cuda": "pip install x"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.name = "other"  # type: ignore[misc]  # writing to a frozen object on purpose: the refusal is what is tested
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.requires = ("x",)  # type: ignore[misc]  # writing to a frozen object on purpose: the refusal is what is tested
    with pytest.raises(TypeError):
        m.cpu_vendor_notes["intel"] = "x"  # type: ignore[index]  # writing to a frozen object on purpose: the refusal is what is tested
    with pytest.raises(TypeError):
        m.install_hints["cuda"] = "x"  # type: ignore[index]  # writing to a frozen object on purpose: the refusal is what is tested


def test_mappings_given_to_a_manifest_are_copied() -> None:
    notes = {"amd": "note"}
    m = _manifest(cpu_vendor_notes=notes)
    notes["intel"] = "changed later"
    assert dict(m.cpu_vendor_notes) == {"amd": "note"}


@pytest.mark.parametrize(
    "value",
    [
        GPURequirement("nvidia"),
        LibraryRequirement("a", "b", "c"),
        ModuleRequirement("a", "b", "c"),
        EnvVar("A", "b"),
        AutoCondition(),
    ],
)
def test_requirement_types_are_frozen(value) -> None:
    field = dataclasses.fields(value)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, field, getattr(value, field))


def test_platform_label_reads_like_the_seed() -> None:
    assert _manifest(platforms=("linux", "windows")).platform_label == "Linux, Windows"
    assert _manifest(platforms=("macos",)).platform_label == "macOS"


def test_env_var_names_collects_every_variable_once() -> None:
    m = _manifest(
        env_vars=(EnvVar("A_VAR", "x"), EnvVar("B_VAR", "y")),
        disabled_by=("B_VAR", "C_VAR"),
        auto=AutoCondition(env_set=("D_VAR",)),
    )
    assert m.env_var_names() == ("A_VAR", "B_VAR", "C_VAR", "D_VAR")


def test_manifests_compare_by_value() -> None:
    assert _manifest(requires=("cuda",)) == _manifest(requires=("cuda",))
    assert _manifest(requires=("cuda",)) != _manifest(requires=("metal",))


def test_frozen_manifests_and_snapshots_are_hashable() -> None:
    # Frozen value objects: usable as set members and cache keys.
    from mistralrs_torch import load_system

    m = _manifest(cpu_vendor_notes={"amd": "note"})
    assert hash(m) == hash(_manifest(cpu_vendor_notes={"amd": "note"}))
    assert len({m, _manifest(cpu_vendor_notes={"amd": "note"})}) == 1
    assert hash(load_system("h100")) == hash(load_system("h100"))
