"""The metal plugin: support answers everywhere, real MPS numerics where an Apple GPU exists."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mistralrs_torch
from mistralrs_torch.ops import CallSpec
from mistralrs_torch.runtime import Runtime
from mistralrs_torch_metal import plugin
from mistralrs_torch_metal._backend import mps_attention, mps_dtypes, mps_matmul


def test_backends_refuse_other_devices_and_float64_with_reasons() -> None:
    attention, matmul = mps_attention(), mps_matmul()
    assert (attention.feature, matmul.feature) == ("metal", "metal")
    cpu = attention.supports(CallSpec("attention", "float32", "cpu", 64))
    assert not cpu.ok and "mps only" in cpu.reason
    f64 = matmul.supports(CallSpec("linear", "float64", "mps"))
    assert not f64.ok and "float64" in f64.reason
    assert attention.supports(CallSpec("attention", "float16", "mps", 64)).ok


def test_bfloat16_is_claimed_only_where_mps_can_run_it() -> None:
    bf16 = mps_matmul().supports(CallSpec("linear", "bfloat16", "mps"))
    expected = torch.backends.mps.is_available() and torch.backends.mps.is_macos_or_newer(14, 0)
    assert bf16.ok == expected
    assert ("bfloat16" in mps_dtypes()) == expected


def test_hooks_return_nothing_unless_metal_is_active() -> None:
    snapshot = mistralrs_torch.load_system("apple-m2")
    assert plugin.mistralrs_devices(frozenset({"cpu"}), snapshot) == ()
    assert plugin.mistralrs_attention_backends(frozenset({"cpu"})) == ()
    assert plugin.mistralrs_matmul_backends(frozenset({"cpu"})) == ()


def test_apple_m2_profile_activates_metal_and_accelerate_with_opt_in_paged_attention() -> None:
    pm = mistralrs_torch.PluginManager(environ={})
    resolution = mistralrs_torch.resolve(
        pm.features, pm.broken, mistralrs_torch.Selection(), mistralrs_torch.load_system("apple-m2"), {}
    )
    assert {"metal", "accelerate", "cpu"} <= set(resolution.active)
    assert resolution.status("metal").manifest.paged_attention == "opt-in"


def test_an_intel_mac_with_an_amd_gpu_runs_metal_when_mps_is_there() -> None:
    # The seed: metal needs "macOS with Apple Silicon or AMD GPU"; torch MPS drives both.
    pm = mistralrs_torch.PluginManager(environ={})

    def metal(data: dict) -> mistralrs_torch.FeatureStatus:
        system = mistralrs_torch.SystemSnapshot.from_json(data)
        return mistralrs_torch.resolve(pm.features, pm.broken, mistralrs_torch.Selection(), system, {}).status("metal")

    mac = mistralrs_torch.load_system("intel-mac-amd").to_json()
    assert metal(mac).status == "active"
    without_mps = {**mac, "libraries": {"accelerate": "14.7"}}
    assert "torch MPS backend not found" in metal(without_mps).reasons[0]
    without_gpu = {**mac, "gpus": []}
    assert metal(without_gpu).reasons[0].startswith("metal needs an Apple or AMD GPU; none is visible")


def test_explicit_metal_on_linux_gets_the_seed_message() -> None:
    pm = mistralrs_torch.PluginManager(environ={})
    with pytest.raises(mistralrs_torch.SelectionError, match="metal is macOS-only: remove the metal feature"):
        mistralrs_torch.resolve(
            pm.features,
            pm.broken,
            mistralrs_torch.Selection("explicit", ("metal",), "--features"),
            mistralrs_torch.load_system("xeon-cpu"),
            {},
        )


@pytest.mark.mps
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_mps_ops_match_float64_reference(dtype: torch.dtype) -> None:
    from mistralrs_torch.testing import references as ref

    runtime = Runtime.create(features="metal", paged_attention=True, environ={})
    assert runtime.device.torch_device == "mps"
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, n, 64, generator=gen) for n in (3, 7, 7))
    k, v = k[:, :2], v[:, :2]
    out = runtime.attention(*(runtime.to_device(t.to(dtype)) for t in (q, k, v)), causal=True)
    expected = ref.attention_reference(
        q.to(dtype).double().numpy(), k.to(dtype).double().numpy(), v.to(dtype).double().numpy(), causal=True
    )
    assert np.abs(out.cpu().double().numpy() - expected).max() < (1e-4 if dtype == torch.float32 else 4e-3)
    w8 = torch.randint(-127, 128, (8, 32), dtype=torch.int8)
    scale, x = torch.rand(8) / 50, torch.randn(2, 32)
    y = runtime.int8_linear(runtime.to_device(x.to(dtype)), runtime.to_device(w8), runtime.to_device(scale.to(dtype)))
    expected = ref.int8_linear_reference(x.to(dtype).double().numpy(), w8.numpy(), scale.to(dtype).double().numpy())
    assert np.abs(y.cpu().double().numpy() - expected).max() / np.abs(expected).max() < 4e-3
    assert runtime.bindings[0].chosen == "mps-attention" and not runtime.fallbacks
