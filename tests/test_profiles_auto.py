"""Auto-mode resolution under every shipped system profile, with the real installed plugins.

Each profile is a machine that is not here (a Hopper box, a V100, a Mac...);
the expected statuses come from the seed's feature table and hardware tables.
"""

from __future__ import annotations

import pytest

from mistralrs_torch import ConfigError, Selection, SelectionError, SystemSnapshot, load_system
from mistralrs_torch.system import PROFILE_NAMES

SHIPPED_PROFILES = ("h100", "h100-fa2", "a100", "v100", "rtx4090-windows", "multi-gpu-8xh100", "multi-gpu-4xa100",
                    "apple-m2", "intel-mac-amd", "xeon-cpu", "epyc-cpu")

#: profile -> (active, available); every other installed feature is unavailable.
EXPECTED_AUTO = {
    "h100": ({"cuda", "cudnn", "flash-attn-v3", "mkl", "cpu"}, {"flash-attn", "ring", "nccl"}),
    "h100-fa2": ({"cuda", "cudnn", "flash-attn", "mkl", "cpu"}, {"ring", "nccl"}),
    "a100": ({"cuda", "cudnn", "flash-attn", "mkl", "cpu"}, {"ring", "nccl"}),
    "v100": ({"cuda", "cudnn", "mkl", "cpu"}, {"ring", "nccl"}),
    "rtx4090-windows": ({"cuda", "cudnn", "flash-attn", "mkl", "cpu"}, {"ring"}),
    "multi-gpu-8xh100": ({"cuda", "cudnn", "flash-attn-v3", "mkl", "nccl", "cpu"}, {"flash-attn", "ring"}),
    "multi-gpu-4xa100": ({"cuda", "cudnn", "flash-attn", "mkl", "nccl", "cpu"}, {"ring"}),
    "apple-m2": ({"metal", "accelerate", "cpu"}, {"ring"}),
    # The seed: metal runs on "Apple Silicon or AMD GPU" (MPS drives an Intel Mac's AMD GPU).
    "intel-mac-amd": ({"metal", "accelerate", "cpu"}, {"ring"}),
    "xeon-cpu": ({"mkl", "cpu"}, {"ring"}),
    "epyc-cpu": ({"mkl", "cpu"}, {"ring"}),
}


def _statuses(resolution) -> dict[str, str]:
    return {f.name: f.status for f in resolution.features}


def _reason(resolution, name: str) -> str:
    return " | ".join(resolution.status(name).reasons)


def test_every_listed_profile_ships() -> None:
    assert set(SHIPPED_PROFILES) <= set(PROFILE_NAMES)


@pytest.mark.parametrize("profile", SHIPPED_PROFILES)
def test_auto_mode_statuses_match_the_seed_tables(resolve_on, all_features, profile: str) -> None:
    active, available = EXPECTED_AUTO[profile]
    resolution = resolve_on(profile)
    expected = {name: "active" if name in active else "available" if name in available else "unavailable"
                for name in all_features}
    assert _statuses(resolution) == expected
    assert set(resolution.active) == active


@pytest.mark.parametrize("profile", SHIPPED_PROFILES)
def test_every_feature_says_why_it_has_its_status(resolve_on, profile: str) -> None:
    resolution = resolve_on(profile)
    for feature in resolution.features:
        assert feature.reasons, f"{feature.name} on {profile} has no reason"
        assert all(isinstance(r, str) and r.strip() for r in feature.reasons)


@pytest.mark.parametrize("profile", SHIPPED_PROFILES)
def test_generic_cpu_is_always_active(resolve_on, profile: str) -> None:
    resolution = resolve_on(profile)
    assert "cpu" in resolution.active
    assert resolution.status("cpu").plugin.distribution == "mistralrs-torch"


def test_h100_prefers_flash_attn_v3_and_says_why_flash_attn_was_left_out(resolve_on) -> None:
    resolution = resolve_on("h100")
    assert resolution.status("flash-attn-v3").status == "active"
    assert resolution.status("flash-attn").status == "available"
    reason = _reason(resolution, "flash-attn")
    assert "flash-attn-v3" in reason
    assert "Hopper" in reason
    assert "mutually exclusive" in reason


def test_h100_without_flash_attention_3_uses_flash_attn_and_says_how_to_install_v3(resolve_on) -> None:
    resolution = resolve_on("h100-fa2")
    assert resolution.status("flash-attn").status == "active"
    assert resolution.status("flash-attn-v3").status == "unavailable"
    reason = _reason(resolution, "flash-attn-v3")
    assert "flash_attn_3" in reason
    assert "flash_attn_interface" in reason
    assert "flash-attention/hopper" in reason and "setup.py install" in reason


def test_v100_leaves_flash_attn_out_with_the_compute_capability_reason(resolve_on) -> None:
    resolution = resolve_on("v100")
    assert resolution.status("flash-attn").status == "unavailable"
    assert "flash-attn needs compute capability >= 8.0; GPU 0 (Tesla V100-SXM2-16GB) has 7.0" in _reason(
        resolution, "flash-attn")
    assert "has 7.0" in _reason(resolution, "flash-attn-v3")
    assert "9.0" in _reason(resolution, "flash-attn-v3")


def test_a100_and_rtx4090_have_no_flash_attention_3_because_they_are_not_hopper(resolve_on) -> None:
    assert "GPU 0 (NVIDIA A100-SXM4-80GB) has 8.0" in _reason(resolve_on("a100"), "flash-attn-v3")
    assert "has 8.9" in _reason(resolve_on("rtx4090-windows"), "flash-attn-v3")


def test_nccl_is_linux_only_on_windows(resolve_on) -> None:
    resolution = resolve_on("rtx4090-windows")
    assert resolution.status("nccl").status == "unavailable"
    assert "nccl is Linux-only" in _reason(resolution, "nccl")


def test_nccl_is_active_on_eight_gpus_and_off_on_one(resolve_on) -> None:
    assert resolve_on("multi-gpu-8xh100").status("nccl").status == "active"
    single = resolve_on("h100")
    assert single.status("nccl").status == "available"
    assert "2 or more GPUs" in _reason(single, "nccl")


def test_ring_wins_over_nccl_when_ring_config_is_set(resolve_on) -> None:
    resolution = resolve_on("multi-gpu-8xh100", environ={"RING_CONFIG": "/etc/ring.json"})
    assert resolution.status("ring").status == "active"
    assert resolution.status("nccl").status == "available"
    reason = _reason(resolution, "nccl")
    assert "ring" in reason and "mutually exclusive" in reason
    assert set(resolution.active) == {"cuda", "cudnn", "flash-attn-v3", "mkl", "ring", "cpu"}


def test_ring_is_available_until_ring_config_is_set(resolve_on) -> None:
    without = resolve_on("xeon-cpu")
    assert without.status("ring").status == "available"
    assert "RING_CONFIG" in _reason(without, "ring")
    assert resolve_on("xeon-cpu", environ={"RING_CONFIG": "ring.json"}).status("ring").status == "active"


@pytest.mark.parametrize(("gpus", "environ", "status", "reason"), [
    (3, {}, "unavailable", "nccl needs a power-of-two number of GPUs (1, 2, 4, 8, ...), and 3 are visible: "
                           "set MISTRALRS_MN_LOCAL_WORLD_SIZE=2 to use 2 of them"),
    (3, {"MISTRALRS_MN_LOCAL_WORLD_SIZE": "2"}, "active", "all requirements hold"),
    (6, {"MISTRALRS_MN_LOCAL_WORLD_SIZE": "4"}, "active", "all requirements hold"),
    (3, {"LOCAL_WORLD_SIZE": "2"}, "active", "all requirements hold"),  # torchrun --nproc-per-node 2
    (8, {"MISTRALRS_MN_LOCAL_WORLD_SIZE": "6"}, "unavailable", "MISTRALRS_MN_LOCAL_WORLD_SIZE=6 uses 6: set "
                                                                "MISTRALRS_MN_LOCAL_WORLD_SIZE=4"),
    (3, {"MISTRALRS_MN_LOCAL_WORLD_SIZE": "4"}, "unavailable", "MISTRALRS_MN_LOCAL_WORLD_SIZE=4 asks for 4 GPUs but 3"),
    (3, {"MISTRALRS_MN_LOCAL_WORLD_SIZE": "two"}, "unavailable", "MISTRALRS_MN_LOCAL_WORLD_SIZE='two' is not a number"),
    (8, {"MISTRALRS_MN_LOCAL_WORLD_SIZE": "1"}, "available", "auto mode enables nccl with 2 or more GPUs"),
    (3, {"MISTRALRS_NO_NCCL": "1"}, "unavailable", "nccl is turned off by MISTRALRS_NO_NCCL=1"),
])
def test_nccl_runs_only_on_a_power_of_two_gpus_in_every_mode(resolve_on, explicit, profile_json, gpus, environ,
                                                             status, reason) -> None:
    data = profile_json("multi-gpu-8xh100")
    data["gpus"] = data["gpus"][:gpus]
    system = SystemSnapshot.from_json(data)
    resolution = resolve_on(system, environ=environ)
    assert resolution.status("nccl").status == status
    assert reason in _reason(resolution, "nccl")
    # An explicit selection gets the same answer: accepted exactly where nccl can run.
    if status == "unavailable" and "MISTRALRS_NO_NCCL" not in environ:
        with pytest.raises(SelectionError) as caught:
            resolve_on(system, explicit("nccl"), environ)
        assert reason in str(caught.value)
    elif "MISTRALRS_NO_NCCL" not in environ:
        assert "nccl" in resolve_on(system, explicit("nccl"), environ).active


def test_mistralrs_no_nccl_turns_nccl_off(resolve_on) -> None:
    resolution = resolve_on("multi-gpu-8xh100", environ={"MISTRALRS_NO_NCCL": "1"})
    assert resolution.status("nccl").status == "unavailable"
    assert "MISTRALRS_NO_NCCL=1" in _reason(resolution, "nccl")
    assert set(resolution.active) == {"cuda", "cudnn", "flash-attn-v3", "mkl", "cpu"}


def test_mistralrs_no_nccl_set_to_a_false_value_leaves_nccl_on(resolve_on) -> None:
    assert resolve_on("multi-gpu-8xh100", environ={"MISTRALRS_NO_NCCL": "0"}).status("nccl").status == "active"


def test_mistralrs_no_nccl_with_a_non_boolean_value_is_a_config_error(resolve_on) -> None:
    with pytest.raises(ConfigError, match="MISTRALRS_NO_NCCL"):
        resolve_on("multi-gpu-8xh100", environ={"MISTRALRS_NO_NCCL": "maybe"})


def test_apple_silicon_gets_metal_and_accelerate(resolve_on) -> None:
    resolution = resolve_on("apple-m2")
    assert set(resolution.active) == {"metal", "accelerate", "cpu"}
    assert "Linux" in _reason(resolution, "cuda") and "macOS" in _reason(resolution, "cuda")
    assert "macOS" in _reason(resolution, "mkl")
    assert "Linux-only" in _reason(resolution, "nccl")


def test_linux_boxes_say_metal_and_accelerate_are_macos_only(resolve_on) -> None:
    resolution = resolve_on("xeon-cpu")
    assert "metal is macOS-only" in _reason(resolution, "metal")
    assert "accelerate is macOS-only" in _reason(resolution, "accelerate")


def test_cpu_only_boxes_say_cuda_needs_an_nvidia_gpu(resolve_on) -> None:
    resolution = resolve_on("epyc-cpu")
    assert "NVIDIA GPU" in _reason(resolution, "cuda")
    assert "cuDNN not found" in _reason(resolution, "cudnn")


def test_mkl_on_amd_carries_the_seed_note_and_on_intel_does_not(resolve_on) -> None:
    epyc = resolve_on("epyc-cpu").status("mkl")
    assert epyc.status == "active"
    assert any("Intel-optimized" in note and "AMD" in note for note in epyc.notes)
    assert resolve_on("a100").status("mkl").notes == epyc.notes
    xeon = resolve_on("xeon-cpu").status("mkl")
    assert xeon.status == "active"
    assert xeon.notes == ()


def test_blackwell_uses_flash_attn_and_flash_attn_v3_says_to_use_flash_attn(resolve_on, profile_json) -> None:
    data = profile_json("h100")
    data["gpus"][0]["compute_capability"] = [10, 0]
    data["gpus"][0]["name"] = "NVIDIA B200"
    blackwell = SystemSnapshot.from_json(data, source="b200")
    resolution = resolve_on(blackwell)
    assert resolution.status("flash-attn").status == "active"
    assert resolution.status("flash-attn-v3").status == "unavailable"
    reason = _reason(resolution, "flash-attn-v3")
    assert "use flash-attn" in reason
    assert "GPU 0 (NVIDIA B200) has 10.0" in reason
    assert set(resolution.active) == {"cuda", "cudnn", "flash-attn", "mkl", "cpu"}


def test_rtx_50_series_blackwell_12_0_runs_flash_attn(resolve_on, profile_json) -> None:
    data = profile_json("rtx4090-windows")
    data["gpus"][0]["compute_capability"] = [12, 0]
    resolution = resolve_on(SystemSnapshot.from_json(data))
    assert resolution.status("flash-attn").status == "active"
    assert resolution.status("flash-attn-v3").status == "unavailable"


def test_torch_without_cuda_is_reported_as_cuda_not_found(resolve_on, profile_json) -> None:
    data = profile_json("h100")
    data["libraries"].pop("cuda")
    data["torch"]["cuda"] = None
    resolution = resolve_on(SystemSnapshot.from_json(data))
    assert resolution.status("cuda").status == "unavailable"
    assert "CUDA not found" in _reason(resolution, "cuda")
    for dependent in ("cudnn", "flash-attn", "flash-attn-v3", "nccl"):
        assert resolution.status(dependent).status == "unavailable", dependent
    assert set(resolution.active) == {"mkl", "cpu"}


def test_missing_mkl_says_install_oneapi(resolve_on, profile_json) -> None:
    data = profile_json("xeon-cpu")
    data["libraries"].pop("mkl")
    resolution = resolve_on(SystemSnapshot.from_json(data))
    assert resolution.status("mkl").status == "unavailable"
    reason = _reason(resolution, "mkl")
    assert "MKL not found" in reason
    assert "oneAPI" in reason


def test_mkl_needs_an_x86_64_cpu(resolve_on, profile_json) -> None:
    data = profile_json("xeon-cpu")
    data["arch"] = "arm64"
    resolution = resolve_on(SystemSnapshot.from_json(data))
    assert resolution.status("mkl").status == "unavailable"
    assert "x86_64" in _reason(resolution, "mkl")


def test_missing_cudnn_leaves_cuda_active(resolve_on, profile_json) -> None:
    data = profile_json("h100")
    data["libraries"].pop("cudnn")
    resolution = resolve_on(SystemSnapshot.from_json(data))
    assert resolution.status("cuda").status == "active"
    assert resolution.status("cudnn").status == "unavailable"
    assert "cuDNN not found" in _reason(resolution, "cudnn")


ENV_VARIANTS = ({}, {"RING_CONFIG": "ring.json"}, {"MISTRALRS_NO_NCCL": "1"},
                {"RING_CONFIG": "ring.json", "MISTRALRS_NO_NCCL": "1"})


@pytest.mark.parametrize("environ", ENV_VARIANTS, ids=lambda e: ",".join(e) or "plain")
@pytest.mark.parametrize("profile", SHIPPED_PROFILES)
def test_auto_mode_never_produces_an_invalid_set(manager, resolve_on, explicit, profile, environ) -> None:
    resolution = resolve_on(profile, environ=environ)
    manifests = {f.manifest.name: f.manifest for f in manager.features}
    system = load_system(profile)
    active = set(resolution.active)
    for name in active:
        m = manifests[name]
        assert not m.platforms or system.os in m.platforms, name  # empty: every platform
        assert set(m.requires) <= active, name
        assert not set(m.excludes) & active, name
    # The same set selected explicitly passes every rule and gives the same active set.
    again = resolve_on(profile, explicit(*(n for n in resolution.active if n != "cpu")), environ)
    assert set(again.active) == active


@pytest.mark.parametrize("profile", SHIPPED_PROFILES)
def test_none_selection_keeps_only_the_generic_cpu(resolve_on, profile) -> None:
    resolution = resolve_on(profile, Selection(mode="none", source="MISTRALRS_FEATURES"))
    assert resolution.active == ("cpu",)
    auto_active = set(EXPECTED_AUTO[profile][0]) - {"cpu"}
    for name in auto_active:
        status = resolution.status(name)
        assert status.status == "available"
        assert "MISTRALRS_FEATURES" in " ".join(status.reasons)


def test_auto_mode_on_an_unknown_platform_falls_back_to_the_generic_cpu(resolve_on, profile_json) -> None:
    # The probe names any other OS by sys.platform; the built-in CPU backend and ring ("All" platforms
    # in the seed) must still work there.
    data = profile_json("apple-m2")
    data["os"] = "freebsd"
    data["gpus"] = []
    resolution = resolve_on(SystemSnapshot.from_json(data))
    assert resolution.active == ("cpu",)
    assert resolution.status("ring").status == "available"
    assert "not freebsd" in _reason(resolution, "cuda")
    assert "metal is macOS-only" in _reason(resolution, "metal")


def test_cudnn_without_an_active_cuda_says_it_requires_cuda(resolve_on, profile_json) -> None:
    data = profile_json("h100")
    data["gpus"] = []
    resolution = resolve_on(SystemSnapshot.from_json(data))
    assert resolution.status("cuda").status == "unavailable"
    assert resolution.status("cudnn").status == "unavailable"
    reason = _reason(resolution, "cudnn")
    assert reason.startswith("requires cuda")
    assert "NVIDIA GPU" in reason
