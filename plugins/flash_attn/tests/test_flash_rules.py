"""flash-attn and flash-attn-v3 under simulated machines: resolution, doctor, and every backend's support answers.

The profiles are machines that are not here (an H100 with and without
FlashAttention-3, an A100, a V100, an RTX 4090 on Windows, eight H100s, an
Apple M2); each rule is checked with its exact message.
"""

from __future__ import annotations

import dataclasses
import sys

import pytest

from mistralrs_torch import GPU, PluginManager, Selection, SelectionError, load_system, resolve
from mistralrs_torch.ops import CallSpec
from mistralrs_torch.system import GPUFacts
from mistralrs_torch_flash_attn import INSTALL_FLASH_ATTN, INSTALL_FLASH_ATTN_3, plugin
from mistralrs_torch_flash_attn._backends import (
    FA2_PRIORITY,
    FA3_PRIORITY,
    FlashAttention2,
    FlashAttention3,
    TorchFlashAttention,
)
from mistralrs_torch_flash_attn._checks import flash_checks

PROFILES = ("h100", "h100-fa2", "a100", "v100", "rtx4090-windows", "multi-gpu-8xh100", "apple-m2")
_FA3_INSTALL = INSTALL_FLASH_ATTN_3


def _resolve(system, *features: str):
    manager = PluginManager(environ={})
    selection = Selection("explicit", features, "--features") if features else Selection()
    snapshot = load_system(system) if isinstance(system, str) else system
    return resolve(manager.features, manager.broken, selection, snapshot, {})


def _blackwell():
    h100 = load_system("h100")
    gpu = dataclasses.replace(h100.gpus[0], name="NVIDIA B200", compute_capability=(10, 0))
    return dataclasses.replace(h100, gpus=(gpu,), source="b200")


#: profile -> (flash-attn status, its first reason; flash-attn-v3 status, its first reason), auto mode.
AUTO = {
    "h100": ("available", "left out: flash-attn-v3 is preferred on Hopper and flash-attn and flash-attn-v3 are "
                          "mutually exclusive", "active", "all requirements hold"),
    "h100-fa2": ("active", "all requirements hold", "unavailable",
                 f"flash_attn_3 is not installed (module flash_attn_interface not found): {_FA3_INSTALL}"),
    "a100": ("active", "all requirements hold", "unavailable",
             "flash-attn-v3 needs compute capability >= 9.0; GPU 0 (NVIDIA A100-SXM4-80GB) has 8.0: use a GPU with "
             "compute capability >= 9.0, or remove the flash-attn-v3 feature"),
    "v100": ("unavailable", "flash-attn needs compute capability >= 8.0; GPU 0 (Tesla V100-SXM2-16GB) has 7.0: use a "
                            "GPU with compute capability >= 8.0, or remove the flash-attn feature",
             "unavailable", "flash-attn-v3 needs compute capability >= 9.0; GPU 0 (Tesla V100-SXM2-16GB) has 7.0: use "
                            "a GPU with compute capability >= 9.0, or remove the flash-attn-v3 feature"),
    "rtx4090-windows": ("active", "all requirements hold", "unavailable",
                        "flash-attn-v3 needs compute capability >= 9.0; GPU 0 (NVIDIA GeForce RTX 4090) has 8.9: use "
                        "a GPU with compute capability >= 9.0, or remove the flash-attn-v3 feature"),
    "multi-gpu-8xh100": ("available", "left out: flash-attn-v3 is preferred on Hopper and flash-attn and flash-attn-v3 "
                                      "are mutually exclusive", "active", "all requirements hold"),
    "apple-m2": ("unavailable", "flash-attn runs on Linux, Windows, not macOS: remove the flash-attn feature",
                 "unavailable", "flash-attn-v3 runs on Linux, Windows, not macOS: remove the flash-attn-v3 feature"),
}


@pytest.mark.parametrize("profile", PROFILES)
def test_auto_mode_status_and_reason_on_every_profile(profile: str) -> None:
    resolution = _resolve(profile)
    fa2, fa2_reason, fa3, fa3_reason = AUTO[profile]
    assert (resolution.status("flash-attn").status, resolution.status("flash-attn").reasons[0]) == (fa2, fa2_reason)
    v3 = resolution.status("flash-attn-v3")
    assert (v3.status, v3.reasons[0]) == (fa3, fa3_reason)


def test_v100_explicit_flash_attn_fails_with_the_compute_capability_reason() -> None:
    with pytest.raises(SelectionError) as caught:
        _resolve("v100", "flash-attn")
    (violation,) = caught.value.violations
    assert violation.message == "flash-attn needs compute capability >= 8.0; GPU 0 (Tesla V100-SXM2-16GB) has 7.0"
    assert violation.fix == "use a GPU with compute capability >= 8.0, or remove the flash-attn feature"


def test_explicit_flash_attn_and_v3_together_are_rejected() -> None:
    with pytest.raises(SelectionError) as caught:
        _resolve("h100", "flash-attn", "flash-attn-v3")
    assert any("mutually exclusive" in v.message for v in caught.value.violations)


def test_blackwell_points_flash_attn_v3_users_to_flash_attn() -> None:
    resolution = _resolve(_blackwell())
    assert resolution.status("flash-attn").status == "active"
    assert resolution.status("flash-attn-v3").reasons[0] == (
        "flash-attn-v3 needs compute capability 9.x; GPU 0 (NVIDIA B200) has 10.0: FlashAttention-3 kernels are "
        "Hopper-only: use flash-attn on this GPU")


def test_flash_attn_auto_enables_cuda_when_selected_alone() -> None:
    assert {"flash-attn", "cuda"} <= set(_resolve("a100", "flash-attn").active)


# -- doctor ------------------------------------------------------------------------------------------

def _checks(profile, active=None) -> dict[str, tuple[str, str, str]]:
    system = load_system(profile) if isinstance(profile, str) else profile
    active = frozenset(_resolve(system).active) if active is None else active
    return {c.subject: (c.status, c.message, c.fix) for c in flash_checks(active, system)}


def test_doctor_names_the_flash_attn_package_when_installed() -> None:
    assert _checks("h100-fa2") == {"flash-attn implementation": (
        "ok", "the flash-attn package 2.7.4.post1: dense attention (flash_attn_func) and paged decode "
              "(flash_attn_with_kvcache, KV-cache blocks that are multiples of 256)", "")}


def test_doctor_names_torchs_kernel_and_prints_the_install_command_without_the_package() -> None:
    (status, message, fix), = _checks("rtx4090-windows").values()
    assert status == "info"
    assert message == ("the flash-attn package is not installed: flash-attn runs on torch 2.11.0+cu128's built-in "
                       "FlashAttention-2 kernel (dense attention; causal only when query and keys have one length; no "
                       "explicit masks); paged attention runs on cuda-sdpa's gather")
    assert fix.startswith(f"for bottom-right causal and paged decode with FlashAttention-2: {INSTALL_FLASH_ATTN} ")


def test_doctor_names_flash_attention_3_on_hopper() -> None:
    assert _checks("h100") == {"flash-attn-v3 implementation": (
        "ok", "FlashAttention-3 (module flash_attn_interface, flash_attn_3 3.0.0b1): dense and paged attention on "
              "Hopper", "")}


@pytest.mark.parametrize("profile", ["v100", "apple-m2"])
def test_doctor_says_nothing_of_its_own_where_neither_feature_is_active(profile: str) -> None:
    assert _checks(profile) == {}


def test_this_machine_proves_imports_broken_packages_are_warned_and_v3_is_an_error() -> None:
    def broken(module: str):
        return None, f"ImportError: {module}_C.so: undefined symbol: _ZN3c10"

    system = load_system("h100-fa2")
    (fa2,) = flash_checks(frozenset({"cuda", "flash-attn"}), system, broken)
    assert fa2.status == "warning" and fa2.message.startswith(
        "flash-attn 2.7.4.post1 is installed but does not import (ImportError: flash_attn_C.so: undefined symbol")
    assert fa2.fix == ("rebuild it against this torch: "
                       "pip install --force-reinstall --no-build-isolation flash-attn==2.7.4.post1")
    (fa3,) = flash_checks(frozenset({"cuda", "flash-attn-v3"}), load_system("h100"), broken)
    assert fa3.status == "error" and "its attention calls fall through to the next backend" in fa3.message
    assert fa3.fix == f"rebuild FlashAttention-3 against this torch: {INSTALL_FLASH_ATTN_3}"


def test_the_plugins_doctor_hook_never_imports_for_a_loaded_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch  # noqa: F401 - as after a verification run in this process

    def fail(name: str):
        raise AssertionError(f"imported {name} to judge a loaded profile")

    monkeypatch.setattr("mistralrs_torch_flash_attn._select.import_optional", fail)
    checks = plugin.mistralrs_doctor_checks(frozenset({"cuda", "flash-attn-v3"}), load_system("h100"))
    assert [c.status for c in checks] == ["ok"]


# -- support answers under each profile's GPU ---------------------------------------------------------

def _facts(profile: str) -> GPUFacts:
    return GPUFacts.from_snapshot(load_system(profile))


class _Package:
    """Just enough of a flash-attn module to build the backend (its calls are tested in test_call_paths)."""

    @staticmethod
    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                        alibi_slopes=None, deterministic=False, return_attn_probs=False):
        raise AssertionError("not called")

    @staticmethod
    def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                                cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                                softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False):
        raise AssertionError("not called")

    @staticmethod
    def flash_attn_with_kvcache_v3(q, k_cache, v_cache, k=None, v=None, qv=None, rotary_cos=None, rotary_sin=None,
                                   cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, page_table=None,
                                   cu_seqlens_q=None, cu_seqlens_k_new=None, max_seqlen_q=None, rotary_seqlens=None,
                                   q_descale=None, k_descale=None, v_descale=None, softmax_scale=None, causal=False,
                                   window_size=(-1, -1), attention_chunk=0, softcap=0.0, rotary_interleaved=True,
                                   scheduler_metadata=None, num_splits=0, pack_gqa=None, sm_margin=0,
                                   return_softmax_lse=False):
        raise AssertionError("not called")


def _fa3_module():
    import types

    module = types.ModuleType("flash_attn_interface")
    module.flash_attn_func = _Package.flash_attn_func
    module.flash_attn_with_kvcache = _Package.flash_attn_with_kvcache_v3
    return module


def _call(op="attention", dtype="bfloat16", head=128, mask="causal", aligned=True, gqa=True, block=256,
          device="cuda") -> CallSpec:
    if op == "paged_attention":
        return CallSpec(op, dtype, device, head, mask, gqa=gqa, block_size=block)
    return CallSpec(op, dtype, device, head, mask, gqa=gqa, aligned=aligned)


def _answer(backend, **kwargs) -> str:
    support = backend.supports(_call(**kwargs))
    assert support.ok or support.reason, "a refusal must carry its reason"
    return "ok" if support.ok else support.reason


def test_flash_attn_package_support_matrix_on_an_a100() -> None:
    backend = FlashAttention2(_Package, "2.7.4.post1", _facts("a100"))
    assert _answer(backend) == "ok"
    assert _answer(backend, aligned=False) == "ok"  # bottom-right causal is native
    assert _answer(backend, dtype="float16", head=64, mask="none") == "ok"
    assert _answer(backend, dtype="float32") == ("dtype float32 is not one of float16, bfloat16 (FlashAttention-2 "
                                                 "computes in half precision)")
    assert _answer(backend, dtype="int8").startswith("dtype int8 is not one of")
    assert _answer(backend, head=96) == "ok"
    assert _answer(backend, head=100) == "head size 100 is not a multiple of 8 up to 256, the head sizes " \
                                         "FlashAttention-2 runs"
    assert _answer(backend, head=512).startswith("head size 512 is not a multiple of 8 up to 256")
    for mask in ("bool", "float", "causal+bool", "causal+float"):
        assert _answer(backend, mask=mask) == (f"mask {mask} is not taken: FlashAttention-2 runs causal or unmasked "
                                               "attention only (explicit masks go to the next backend)")
    assert _answer(backend, device="cpu") == "runs on cuda only, not cpu"
    assert _answer(backend, op="paged_attention", block=512) == "ok"
    assert _answer(backend, op="paged_attention", block=16).startswith("block size 16 is not a multiple of 256")


def test_flash_attn_package_refuses_a_v100_even_if_bound_there() -> None:
    backend = FlashAttention2(_Package, "2.7.4.post1", _facts("v100"))
    assert _answer(backend) == ("FlashAttention-2 needs compute capability 8.0 or newer (Ampere, Ada, Hopper, "
                                "Blackwell); Tesla V100-SXM2-16GB has 7.0")


def test_torch_flash_support_matrix_on_an_rtx4090() -> None:
    backend = TorchFlashAttention(_facts("rtx4090-windows"))
    assert _answer(backend) == "ok"
    assert _answer(backend, mask="none", aligned=False) == "ok"  # no causal mask, no alignment question
    assert _answer(backend, aligned=False) == (
        "causal attention with a query shorter or longer than the keys: torch's flash kernel aligns the causal mask "
        "top-left, the op contract bottom-right (install flash-attn for bottom-right causal: pip install flash-attn "
        "--no-build-isolation)")
    assert _answer(backend, mask="causal+bool").startswith("mask causal+bool is not taken: torch's FlashAttention-2 "
                                                           "kernel runs causal or unmasked attention only")
    assert _answer(backend, dtype="float64").startswith("dtype float64 is not one of float16, bfloat16")
    assert _answer(backend, head=264).startswith("head size 264 is not a multiple of 8 up to 256")
    assert backend.paged_attention is None  # not a candidate for paged calls at all


def test_torch_flash_asks_torch_last_and_reports_its_refusal() -> None:
    asked = []

    def check(call: CallSpec) -> str:
        asked.append(call)
        return "torch 2.11.0's can_use_flash_attention refuses this call on this GPU"

    backend = TorchFlashAttention(_facts("a100"), check)
    assert _answer(backend, dtype="float32").startswith("dtype float32")  # static rules first: torch not asked
    assert asked == []
    assert _answer(backend) == "torch 2.11.0's can_use_flash_attention refuses this call on this GPU"
    assert len(asked) == 1


def test_torch_flash_refuses_gpus_it_has_no_kernel_for() -> None:
    assert _answer(TorchFlashAttention(_facts("v100"))) == (
        "torch's FlashAttention-2 kernel needs compute capability 8.0 to 12.1; Tesla V100-SXM2-16GB has 7.0")


def test_flash_attention_3_support_matrix_on_hopper_and_elsewhere() -> None:
    hopper = FlashAttention3(_fa3_module(), "3.0.0b1", _facts("h100"))
    assert _answer(hopper) == "ok"
    assert _answer(hopper, aligned=False) == "ok"
    assert _answer(hopper, op="paged_attention", block=16) == "ok"  # FlashAttention-3 pages have any size
    assert _answer(hopper, dtype="float32").startswith("dtype float32 is not one of float16, bfloat16")
    assert _answer(hopper, mask="bool").startswith("mask bool is not taken: FlashAttention-3 runs causal or unmasked")
    ampere = FlashAttention3(_fa3_module(), "3.0.0b1", _facts("a100"))
    assert _answer(ampere) == ("FlashAttention-3 runs on Hopper (compute capability 9.x) only; NVIDIA A100-SXM4-80GB "
                               "has 8.0: use flash-attn")
    blackwell = FlashAttention3(_fa3_module(), "3.0.0b1", GPUFacts.from_snapshot(_blackwell()))
    assert _answer(blackwell).endswith("NVIDIA B200 has 10.0: use flash-attn")


#: profile -> which of (flash-attn package, torch's flash kernel, FlashAttention-3) take a bf16 causal call there.
TAKES = {"h100": (True, True, True), "h100-fa2": (True, True, True), "a100": (True, True, False),
         "v100": (False, False, False), "rtx4090-windows": (True, True, False),
         "multi-gpu-8xh100": (True, True, True), "apple-m2": (False, False, False)}


@pytest.mark.parametrize("profile", PROFILES)
def test_each_profiles_gpu_decides_which_flash_backends_take_a_call(profile: str) -> None:
    facts = GPUFacts.from_snapshot(load_system(profile))
    backends = (FlashAttention2(_Package, "2.7.4", facts), TorchFlashAttention(facts),
                FlashAttention3(_fa3_module(), "3", facts))
    assert tuple(_answer(b) == "ok" for b in backends) == TAKES[profile]
    if profile == "apple-m2":
        assert {_answer(b) for b in backends} == {"torch is a CPU build (no CUDA)"}


def test_a_cpu_build_of_torch_is_named_as_the_reason() -> None:
    a100 = load_system("a100")
    cpu_torch = dataclasses.replace(a100, libraries={k: v for k, v in a100.libraries.items() if k != "cuda"},
                                    torch=dataclasses.replace(a100.torch, cuda=None))
    assert _answer(FlashAttention2(_Package, "2.7.4", GPUFacts.from_snapshot(cpu_torch))) == \
        "torch is a CPU build (no CUDA)"


def test_mixed_gpus_are_judged_by_the_lowest_compute_capability() -> None:
    h100 = load_system("h100")
    v100 = GPU(index=1, name="Tesla V100-SXM2-16GB", vendor="nvidia", compute_capability=(7, 0))
    facts = GPUFacts.from_snapshot(dataclasses.replace(h100, gpus=(h100.gpus[0], v100)))
    assert (facts.capability, facts.gpu) == ((7, 0), "Tesla V100-SXM2-16GB")
    assert _answer(FlashAttention3(_fa3_module(), "3", facts)).endswith("Tesla V100-SXM2-16GB has 7.0: use flash-attn")


def test_priorities_order_fa3_over_fa2_over_cudnn_over_cuda_over_generic() -> None:
    from mistralrs_torch.generic import GenericAttention
    from mistralrs_torch_cuda._backends import CUDA_PRIORITY, CUDNN_PRIORITY

    assert FA3_PRIORITY > FA2_PRIORITY > CUDNN_PRIORITY > CUDA_PRIORITY > GenericAttention().dispatch_priority
    assert FlashAttention2.dispatch_priority == TorchFlashAttention.dispatch_priority == FA2_PRIORITY


def test_hooks_bind_nothing_unless_a_flash_feature_is_active() -> None:
    assert plugin.mistralrs_attention_backends(frozenset({"cuda", "cudnn"})) == ()


def test_hooks_bind_flash_attention_3_on_a_hopper_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "flash_attn_interface", _fa3_module())
    (backend,) = plugin.mistralrs_attention_backends(frozenset({"cuda", "flash-attn-v3"}))
    assert isinstance(backend, FlashAttention3) and backend.module is sys.modules["flash_attn_interface"]
    # It judges calls by the GPU torch sees here: with none (this CPU-only machine) it says so.
    facts = GPUFacts.from_torch()
    assert backend.facts == facts
    if facts.unusable:
        assert backend.supports(_call()).reason == facts.unusable


def test_the_attention_hook_asks_torch_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from mistralrs_torch_flash_attn import plugin

    monkeypatch.setattr(GPUFacts, "from_torch", classmethod(lambda cls: pytest.fail("a hook asked torch")))
    names = [b.name for b in plugin.mistralrs_attention_backends(frozenset({"cuda", "flash-attn"}))]
    assert names in (["flash-attn-package"], ["flash-attn-torch"])
    assert [b.name for b in plugin.mistralrs_attention_backends(frozenset({"cuda", "flash-attn-v3"}))] == \
        ["flash-attn-v3"]
