"""Explicit selections (--features, MISTRALRS_FEATURES, config files) with the real installed plugins.

An explicit set that breaks any rule raises SelectionError listing every
violation with its fix, in the seed's voice. Each line of the seed's
"Conflicting features" list and its troubleshooting section has a test here.
"""

from __future__ import annotations

import pytest

from mistralrs_torch import PluginManager, SelectionError, SystemSnapshot, load_system, resolve


def _violations(resolve_on, system, selection, environ=None) -> SelectionError:
    with pytest.raises(SelectionError) as caught:
        resolve_on(system, selection, environ)
    return caught.value


def _lines(error: SelectionError) -> list[str]:
    return [str(v) for v in error.violations]


# --- The seed's "Conflicting features" list ------------------------------------------------------


def test_flash_attn_and_flash_attn_v3_are_mutually_exclusive(resolve_on, explicit) -> None:
    error = _violations(resolve_on, "h100", explicit("flash-attn", "flash-attn-v3"))
    assert _lines(error) == [
        "flash-attn and flash-attn-v3 are mutually exclusive: enable one (on Hopper, flash-attn-v3)"]
    assert error.violations[0].rule == "excludes"
    assert "flash-attn and flash-attn-v3 are mutually exclusive: enable one (on Hopper, flash-attn-v3)" in str(error)


def test_metal_is_macos_only(resolve_on, explicit) -> None:
    error = _violations(resolve_on, "xeon-cpu", explicit("metal"))
    assert len(error.violations) == 1
    violation = error.violations[0]
    assert (violation.subject, violation.rule) == ("metal", "platform")
    assert str(violation).startswith("metal is macOS-only: remove")
    assert "metal" in violation.fix


def test_metal_with_cuda_on_linux_lists_the_platform_and_the_exclusion(resolve_on, explicit) -> None:
    error = _violations(resolve_on, "h100", explicit("metal", "cuda"))
    rules = {(v.subject, v.rule) for v in error.violations}
    assert ("metal", "platform") in rules
    assert any("metal and cuda are mutually exclusive" in line or "cuda and metal are mutually exclusive" in line
               for line in _lines(error))


def test_metal_with_cuda_on_a_mac_lists_cuda_platform_and_the_exclusion(resolve_on, explicit) -> None:
    error = _violations(resolve_on, "apple-m2", explicit("metal", "cuda"))
    rules = {(v.subject, v.rule) for v in error.violations}
    assert ("cuda", "platform") in rules
    assert any(v.rule == "excludes" for v in error.violations)
    assert not any(v.subject == "metal" and v.rule == "platform" for v in error.violations)


def test_cudnn_without_cuda_says_add_cuda(resolve_on, explicit) -> None:
    error = _violations(resolve_on, "h100", explicit("cudnn"))
    assert _lines(error) == ["cudnn requires cuda: add cuda"]
    assert set(resolve_on("h100", explicit("cuda", "cudnn")).active) == {"cuda", "cudnn", "cpu"}


def test_nccl_auto_enables_cuda(resolve_on, explicit) -> None:
    resolution = resolve_on("multi-gpu-8xh100", explicit("nccl"))
    assert set(resolution.active) == {"nccl", "cuda", "cpu"}
    assert "auto-enabled by nccl" in " ".join(resolution.status("cuda").reasons)


def test_nccl_on_one_gpu_is_accepted_when_selected_explicitly(resolve_on, explicit) -> None:
    assert set(resolve_on("h100", explicit("nccl")).active) == {"nccl", "cuda", "cpu"}


def test_nccl_where_cuda_cannot_be_active_fails_with_cudas_reason(resolve_on, explicit, manager) -> None:
    system = manager.probe_system()
    if system.gpus_of("nvidia") and "cuda" in system.libraries:
        pytest.skip("this machine can run cuda")
    error = _violations(resolve_on, system, explicit("nccl"))
    cuda = [v for v in error.violations if v.subject == "cuda"]
    assert cuda, _lines(error)
    assert not any(v.rule == "requires" for v in error.violations), "cuda is auto-enabled, not demanded"


def test_nccl_requires_cuda_when_no_plugin_provides_cuda(explicit) -> None:
    manager = PluginManager(environ={"MISTRALRS_DISABLE_PLUGINS": "cuda"})
    with pytest.raises(SelectionError) as caught:
        resolve(manager.features, manager.broken, explicit("nccl"), load_system("multi-gpu-8xh100"), {})
    lines = _lines(caught.value)
    assert any(line.startswith("nccl requires cuda: add cuda") for line in lines)
    assert ("cuda", "unknown") in {(v.subject, v.rule) for v in caught.value.violations}


def test_nccl_on_a_mac_fails_with_cudas_platform_reason(resolve_on, explicit) -> None:
    error = _violations(resolve_on, "apple-m2", explicit("nccl"))
    assert ("cuda", "platform") in {(v.subject, v.rule) for v in error.violations}
    assert any(line.startswith("cuda runs on Linux, Windows, not macOS") for line in _lines(error))
    assert not any(v.rule == "requires" for v in error.violations)


def test_flash_attn_auto_enables_cuda(resolve_on, explicit) -> None:
    resolution = resolve_on("a100", explicit("flash-attn"))
    assert set(resolution.active) == {"flash-attn", "cuda", "cpu"}


def test_flash_attn_v3_auto_enables_cuda_on_hopper(resolve_on, explicit) -> None:
    assert set(resolve_on("h100", explicit("flash-attn-v3")).active) == {"flash-attn-v3", "cuda", "cpu"}


# --- Environment contradictions and hardware rules -------------------------------------------------


def test_nccl_with_mistralrs_no_nccl_contradict_each_other(resolve_on, explicit) -> None:
    error = _violations(resolve_on, "multi-gpu-8xh100", explicit("nccl"), {"MISTRALRS_NO_NCCL": "1"})
    assert len(error.violations) == 1
    line = _lines(error)[0]
    assert line.startswith("nccl and MISTRALRS_NO_NCCL=1 contradict each other")
    assert "MISTRALRS_NO_NCCL" in error.violations[0].fix


def test_flash_attn_on_v100_fails_with_the_compute_capability(resolve_on, explicit) -> None:
    error = _violations(resolve_on, "v100", explicit("flash-attn"))
    assert len(error.violations) == 1
    assert error.violations[0].rule == "compute-capability"
    assert error.violations[0].message == (
        "flash-attn needs compute capability >= 8.0; GPU 0 (Tesla V100-SXM2-16GB) has 7.0")
    assert "8.0" in error.violations[0].fix


def test_flash_attn_v3_on_blackwell_says_use_flash_attn(resolve_on, explicit, profile_json) -> None:
    data = profile_json("h100")
    data["gpus"][0]["compute_capability"] = [10, 0]
    error = _violations(resolve_on, SystemSnapshot.from_json(data), explicit("flash-attn-v3"))
    assert [v.rule for v in error.violations] == ["compute-capability"]
    assert "use flash-attn" in error.violations[0].fix
    assert "9.x" in error.violations[0].message


def test_flash_attn_v3_without_flash_attention_3_installed_prints_the_install_command(resolve_on, explicit) -> None:
    error = _violations(resolve_on, "h100-fa2", explicit("flash-attn-v3"))
    assert [v.rule for v in error.violations] == ["module"]
    assert "flash_attn_3" in error.violations[0].message
    assert "flash-attention/hopper" in error.violations[0].fix


def test_nccl_on_windows_is_linux_only(resolve_on, explicit) -> None:
    error = _violations(resolve_on, "rtx4090-windows", explicit("nccl"))
    assert [(v.subject, v.rule) for v in error.violations] == [("nccl", "platform")]
    assert _lines(error)[0].startswith("nccl is Linux-only")


def test_nccl_and_ring_are_mutually_exclusive(resolve_on, explicit) -> None:
    error = _violations(resolve_on, "multi-gpu-8xh100", explicit("nccl", "ring"))
    assert [v.rule for v in error.violations] == ["excludes"]
    assert "mutually exclusive" in error.violations[0].message


def test_ring_is_accepted_without_ring_config_when_explicit(resolve_on, explicit) -> None:
    assert set(resolve_on("epyc-cpu", explicit("ring")).active) == {"ring", "cpu"}


def test_mkl_on_apple_silicon_is_rejected(resolve_on, explicit) -> None:
    error = _violations(resolve_on, "apple-m2", explicit("mkl"))
    assert [(v.subject, v.rule) for v in error.violations] == [("mkl", "platform")]


def test_cuda_on_a_cpu_only_box_says_it_needs_an_nvidia_gpu(resolve_on, explicit) -> None:
    error = _violations(resolve_on, "xeon-cpu", explicit("cuda"))
    assert {v.rule for v in error.violations} == {"gpu", "library"}
    assert any("NVIDIA GPU" in line for line in _lines(error))
    assert any(line.startswith("CUDA not found") for line in _lines(error))


# --- Unknown names and listing every violation ------------------------------------------------------


def test_an_unknown_feature_suggests_the_closest_name(resolve_on, explicit) -> None:
    error = _violations(resolve_on, "h100", explicit("flash-atn"))
    assert [v.rule for v in error.violations] == ["unknown"]
    assert "'flash-attn'" in str(error.violations[0])
    assert "flash-atn" in error.violations[0].message


def test_an_unknown_feature_with_no_close_match_lists_the_installed_ones(resolve_on, explicit, all_features) -> None:
    error = _violations(resolve_on, "h100", explicit("quantum"))
    text = str(error.violations[0])
    assert "did you mean" not in text
    for name in all_features:
        assert name in text


def test_every_violation_is_listed_at_once(resolve_on, explicit) -> None:
    error = _violations(resolve_on, "h100", explicit("flash-attn", "flash-attn-v3", "metal", "flash-atn"))
    rules = sorted((v.subject, v.rule) for v in error.violations)
    assert ("metal", "platform") in rules
    assert ("flash-atn", "unknown") in rules
    assert sum(v.rule == "excludes" for v in error.violations) == 2  # flash-attn/-v3 and metal/cuda
    text = str(error)
    assert text.startswith("the features selected by --features")
    for line in _lines(error):
        assert line in text


def test_every_violation_is_listed_with_environment_contradictions(resolve_on, explicit) -> None:
    error = _violations(resolve_on, "v100", explicit("cudnn", "flash-attn", "nccl", "metal"),
                        {"MISTRALRS_NO_NCCL": "1"})
    rules = {(v.subject, v.rule) for v in error.violations}
    assert {("flash-attn", "compute-capability"), ("nccl", "disabled-by"), ("metal", "platform")} <= rules
    assert all(v.fix for v in error.violations)


def test_cudnn_requires_cuda_is_listed_with_other_problems(resolve_on, explicit) -> None:
    error = _violations(resolve_on, "xeon-cpu", explicit("cudnn", "metal"))
    rules = {(v.subject, v.rule) for v in error.violations}
    assert {("cudnn", "requires"), ("cudnn", "library"), ("metal", "platform")} <= rules
    assert "cudnn requires cuda: add cuda" in _lines(error)


def test_selection_error_names_its_source(resolve_on, explicit) -> None:
    error = _violations(resolve_on, "h100", explicit("metal", source="MISTRALRS_FEATURES"))
    assert error.source == "MISTRALRS_FEATURES"
    assert "MISTRALRS_FEATURES" in str(error)


# --- Valid explicit sets ------------------------------------------------------------------------------


@pytest.mark.parametrize(("profile", "features"), [
    ("h100", ("cuda", "cudnn", "flash-attn-v3")),
    ("a100", ("cuda", "cudnn", "flash-attn")),
    ("v100", ("cuda", "cudnn")),
    ("apple-m2", ("metal", "accelerate")),
    ("xeon-cpu", ("mkl",)),
    ("multi-gpu-8xh100", ("cuda", "cudnn", "flash-attn", "nccl")),
])
def test_the_seed_recommended_combinations_resolve(resolve_on, explicit, profile, features) -> None:
    resolution = resolve_on(profile, explicit(*features))
    assert set(resolution.active) == {*features, "cpu"}
    for name in features:
        assert "selected by --features" in " ".join(resolution.status(name).reasons)


def test_explicit_mode_leaves_unselected_runnable_features_available(resolve_on, explicit) -> None:
    resolution = resolve_on("h100", explicit("cuda"))
    assert resolution.status("mkl").status == "available"
    assert resolution.status("cudnn").status == "available"
    assert resolution.status("metal").status == "unavailable"
    assert "not selected" in " ".join(resolution.status("mkl").reasons)


def test_a_feature_of_a_disabled_plugin_cannot_be_selected(explicit) -> None:
    manager = PluginManager(environ={"MISTRALRS_DISABLE_PLUGINS": "flash_attn"})
    with pytest.raises(SelectionError) as caught:
        resolve(manager.features, manager.broken, explicit("flash-attn"), load_system("h100"), {})
    assert [v.rule for v in caught.value.violations] == ["unknown"]
