"""The cuda and cudnn backends on a CPU-only machine: support answers, call paths, devices, flags, hooks.

The kernels themselves need a GPU (test_cuda_gpu.py); here the cuDNN call is
made on meta tensors, which runs torch's own argument binding and shape rules
for the op without a device, and everything else runs on simulated facts.
"""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest
import torch

import mistralrs_torch
from mistralrs_torch import FeatureManifest, PluginManager, hookimpl, load_system
from mistralrs_torch.ops import CallSpec, Support, op_spec
from mistralrs_torch.runtime import Runtime
from mistralrs_torch.testing import references as ref
from mistralrs_torch_cuda import _backends, plugin
from mistralrs_torch_cuda._backends import CUDNN_OP_ARGUMENTS, CudaSDPA, CudnnAttention, cuda_attention, cuda_matmul
from mistralrs_torch_cuda._devices import cuda_devices
from mistralrs_torch_cuda._facts import CudaFacts

H100 = CudaFacts.from_snapshot(load_system("h100"))


def _call(op="attention", dtype="bfloat16", head=128, mask="causal", aligned=True, gqa=True, device="cuda"):
    return CallSpec(op, dtype, device, head, mask, gqa=gqa, aligned=aligned)


def _answer(backend, **kwargs) -> str:
    support = backend.supports(_call(**kwargs))
    assert support.ok or support.reason
    return "ok" if support.ok else support.reason


# -- cuDNN attention: what it takes and refuses --------------------------------------------------------

def test_cudnn_attention_takes_what_cudnn_runs_on_an_h100() -> None:
    backend = CudnnAttention(H100)
    assert _answer(backend) == "ok"
    assert _answer(backend, dtype="float16", head=64, gqa=False) == "ok"
    assert _answer(backend, mask="none", aligned=False) == "ok"  # decode without a causal mask


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"dtype": "float32"},
     "dtype float32 is not one of float16, bfloat16 (cuDNN attention computes in half precision)"),
    ({"dtype": "int8"}, "dtype int8 is not one of float16, bfloat16 (cuDNN attention computes in half precision)"),
    ({"head": 256}, "head size 256 is not a multiple of 8 up to 128, the head sizes cuDNN attention runs"),
    ({"head": 100}, "head size 100 is not a multiple of 8 up to 128, the head sizes cuDNN attention runs"),
    ({"mask": "bool"}, "mask bool is not taken: this backend runs causal or unmasked attention only (explicit masks "
                       "go to the next backend)"),
    ({"mask": "causal+float"}, "mask causal+float is not taken: this backend runs causal or unmasked attention only "
                               "(explicit masks go to the next backend)"),
    ({"aligned": False}, "causal attention with a query shorter or longer than the keys: cuDNN aligns the causal mask "
                         "top-left, the op contract bottom-right"),
    ({"device": "cpu"}, "runs on cuda only, not cpu"),
    ({"op": "paged_attention"}, "cuDNN attention runs dense attention only, not paged_attention"),
])
def test_cudnn_attention_refuses_with_the_reason(kwargs, reason: str) -> None:
    assert _answer(CudnnAttention(H100), **kwargs) == reason


@pytest.mark.parametrize(("facts", "reason"), [
    (CudaFacts.from_snapshot(load_system("v100")),
     "cuDNN attention needs compute capability 8.0 to 12.1; Tesla V100-SXM2-16GB has 7.0"),
    (dataclasses.replace(H100, cudnn=8907), "cuDNN 8.9.7 is older than 9.0, which torch's cuDNN attention needs: "
                                            "install a torch that ships cuDNN 9"),
    (dataclasses.replace(H100, cudnn=None), "torch loads no cuDNN: install a torch built with cuDNN"),
    (CudaFacts.from_snapshot(load_system("apple-m2")), "torch is a CPU build (no CUDA)"),
])
def test_cudnn_attention_refuses_machines_cudnn_cannot_run_on(facts: CudaFacts, reason: str) -> None:
    assert _answer(CudnnAttention(facts)) == reason


def test_cudnn_attention_refuses_a_torch_whose_op_has_another_signature() -> None:
    old = ("query", "key", "value", "dropout_p", "is_causal", "return_debug_mask", "scale")  # torch 2.4
    backend = CudnnAttention(H100, op_signature=old)
    assert _answer(backend).startswith(f"torch {torch.__version__} has no cuDNN attention op taking (query, key, "
                                       "value, attn_bias, compute_log_sumexp")
    assert _answer(backend).endswith("it has (query, key, value, dropout_p, is_causal, return_debug_mask, scale): "
                                     "use torch 2.5 or newer")


def test_this_torchs_cudnn_op_has_the_signature_the_backend_calls() -> None:
    assert _backends.op_arguments(_backends._cudnn_op) == CUDNN_OP_ARGUMENTS


def test_torchs_own_check_has_the_last_word_and_is_asked_only_after_the_static_rules() -> None:
    asked: list[CallSpec] = []

    def check(call: CallSpec) -> str:
        asked.append(call)
        return "torch 2.11.0's can_use_cudnn_attention refuses this call on this GPU"

    backend = CudnnAttention(H100, check)
    assert _answer(backend, dtype="float32").startswith("dtype float32")
    assert asked == []
    assert _answer(backend) == "torch 2.11.0's can_use_cudnn_attention refuses this call on this GPU"
    assert asked == [_call()]


def test_cudnn_attention_is_no_candidate_for_paged_attention() -> None:
    from mistralrs_torch.runtime import Dispatcher

    assert CudnnAttention.paged_attention is None
    (only,) = Dispatcher(op_spec("paged_attention"), (CudnnAttention(H100), cuda_attention()), no_fallback=False,
                         read_values=False).backends
    assert only.name == "cuda-sdpa"


# -- cuDNN attention: the call path --------------------------------------------------------------------

def _meta(*shapes: tuple[int, ...], dtype=torch.bfloat16) -> list[torch.Tensor]:
    return [torch.empty(*s, device="meta", dtype=dtype) for s in shapes]


@pytest.mark.parametrize("causal", [True, False])
def test_the_cudnn_call_binds_to_torchs_op_schema(monkeypatch: pytest.MonkeyPatch, causal: bool) -> None:
    seen = []
    real = _backends._cudnn_op

    def spy(*args, **kwargs):
        seen.append((args[3:], kwargs))
        return real(*args, **kwargs)  # torch's meta kernel checks the arguments and computes the output's shape

    monkeypatch.setattr(_backends, "_cudnn_op", spy)
    q, k, v = _meta((2, 8, 16, 128), (2, 2, 16, 128), (2, 2, 16, 128))
    out = CudnnAttention.attention(q, k, v, causal=causal)
    assert out.shape == (2, 8, 16, 128) and out.dtype == torch.bfloat16
    # attn_bias, compute_log_sumexp, dropout_p, is_causal, return_debug_mask; the contract's default scale.
    assert seen == [((None, False, 0.0, causal, False), {"scale": 1 / np.sqrt(128)})]
    CudnnAttention.attention(q, k, v, causal=causal, scale=0.5)
    assert seen[-1][1] == {"scale": 0.5}


def test_one_key_is_answered_exactly_without_cudnn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_backends, "_cudnn_op", lambda *a, **k: pytest.fail("cuDNN cannot run one key"))
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, h, n, 64, generator=gen) for h, n in ((8, 1), (2, 1), (2, 1)))
    out = CudnnAttention.attention(q, k, v, causal=True)
    expected = ref.attention_reference(q.double().numpy(), k.double().numpy(), v.double().numpy(), causal=True)
    assert np.abs(out.double().numpy() - expected).max() < 1e-6
    q3 = torch.randn(2, 8, 3, 64, generator=gen)  # three queries, one key, no mask: every row is that value
    out3 = CudnnAttention.attention(q3, k, v, causal=False)
    expected3 = ref.attention_reference(q3.double().numpy(), k.double().numpy(), v.double().numpy())
    assert np.abs(out3.double().numpy() - expected3).max() < 1e-6


# -- cuda's own backends --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_cuda_sdpa_and_matmul_take_every_float_dtype_on_cuda_only(dtype: str) -> None:
    for backend in (cuda_attention(), cuda_matmul()):
        assert backend.supports(CallSpec("attention", dtype, "cuda", 64)).ok
        assert backend.supports(CallSpec("linear", dtype, "cpu")).reason == "runs on cuda only, not cpu"
    assert not cuda_matmul().supports(CallSpec("int8_linear", "int8", "cuda")).ok


def test_cuda_sdpa_runs_the_contract_with_bottom_right_causal() -> None:
    # The same code runs on the GPU; on the CPU it proves the paged gather and causal alignment.
    gen = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 4, 3, 64, generator=gen), torch.randn(2, 2, 9, 64, generator=gen), \
        torch.randn(2, 2, 9, 64, generator=gen)
    out = cuda_attention().attention(q, k, v, causal=True)
    expected = ref.attention_reference(q.double().numpy(), k.double().numpy(), v.double().numpy(), causal=True)
    assert np.abs(out.double().numpy() - expected).max() < 1e-4


def test_int8_linear_dequantises_on_the_inputs_device() -> None:
    x = torch.randn(3, 32)
    w = torch.randint(-127, 128, (8, 32), dtype=torch.int8)
    scale = torch.rand(8) / 50
    out = cuda_matmul().int8_linear(x, w, scale)
    expected = ref.int8_linear_reference(x.double().numpy(), w.numpy(), scale.double().numpy())
    assert np.abs(out.double().numpy() - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())


# -- flags, devices, hooks ------------------------------------------------------------------------------

def _flags() -> tuple[bool, bool, bool]:
    return torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark, torch.backends.cuda.cudnn_sdp_enabled()


def test_hooks_bind_cuda_and_cudnn_backends_without_touching_torch_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CudaFacts, "from_torch", classmethod(lambda cls: pytest.fail("a hook asked torch")))
    before = _flags()
    names = [b.name for b in plugin.mistralrs_attention_backends(frozenset({"cuda", "cudnn"}))]
    assert names == ["cuda-sdpa", "cudnn-attention"]
    assert [b.name for b in plugin.mistralrs_attention_backends(frozenset({"cuda"}))] == ["cuda-sdpa"]
    assert [b.name for b in plugin.mistralrs_matmul_backends(frozenset({"cuda"}))] == ["cuda-int4", "cuda-matmul"]
    assert [b.name for b in plugin.mistralrs_layer_backends(frozenset({"cuda"}))] == ["cuda-layers"]
    assert _flags() == before
    for hook in (plugin.mistralrs_attention_backends, plugin.mistralrs_matmul_backends):
        assert hook(frozenset({"cpu", "cudnn"})) == ()
    assert plugin.mistralrs_devices(frozenset({"cpu"}), load_system("h100")) == ()


def test_without_cudnn_sdpa_keeps_off_cudnn_during_its_own_calls_only(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def spy(q: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return q

    monkeypatch.setattr(CudaSDPA, "attention", lambda self, *a, **k: spy(*a, **k))
    call = CallSpec("attention", "bfloat16", "cuda", 64, "causal")
    q = torch.zeros(1)
    torch.backends.cuda.enable_cudnn_sdp(True)
    CudaSDPA(H100, cudnn=False).kernel_for(call)(q, q, q, causal=True)
    assert CudaSDPA(H100, cudnn=True).kernel_for(call) is None  # torch's SDPA as is, cuDNN allowed
    CudaSDPA(H100, cudnn=True).attention(q, q, q, causal=True)
    assert seen == [False, True] and torch.backends.cuda.cudnn_sdp_enabled()


def _props(name: str, major: int, minor: int, uuid: str, total: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(name=name, major=major, minor=minor, uuid=uuid, total_memory=total)


def test_devices_follow_torchs_numbering_and_match_nvml_by_uuid(monkeypatch: pytest.MonkeyPatch) -> None:
    # NVML numbers in PCI order (the A100 first); CUDA put the H100 first: free memory must follow the UUID.
    h100 = load_system("h100").gpus[0]
    nvml = (mistralrs_torch.GPU(0, "NVIDIA A100-SXM4-80GB", "nvidia", (8, 0), 85899345920, 1000, "GPU-aaaa"),
            dataclasses.replace(h100, index=1, memory_free=2000, uuid="GPU-bbbb"))
    system = dataclasses.replace(load_system("h100"), gpus=nvml)
    props = [_props("NVIDIA H100 80GB HBM3", 9, 0, "bbbb", 85899345920),
             _props("NVIDIA A100-SXM4-80GB", 8, 0, "aaaa", 85899345920)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(props))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props[i])
    devices = cuda_devices(system)
    assert [(d.torch_device, d.name, d.feature, d.memory_free) for d in devices] == [
        ("cuda:0", "NVIDIA H100 80GB HBM3 (compute capability 9.0)", "cuda", 2000),
        ("cuda:1", "NVIDIA A100-SXM4-80GB (compute capability 8.0)", "cuda", 1000)]
    # CUDA_VISIBLE_DEVICES=1 leaves torch one device; an unknown UUID has no free-memory fact.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    props[0] = _props("NVIDIA H100 80GB HBM3", 9, 0, "cccc", 85899345920)
    (only,) = cuda_devices(system)
    assert (only.torch_device, only.memory_total, only.memory_free) == ("cuda:0", 85899345920, None)


def test_no_devices_when_torch_cannot_use_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on this CPU-only machine
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: pytest.fail("asked a GPU that is not there"))
    assert cuda_devices(load_system("h100")) == ()


# -- the runtime tells backends whether query and keys are aligned --------------------------------------

def _recorder_plugin(calls: list[CallSpec]) -> types.SimpleNamespace:
    class Recorder:
        name, feature, dispatch_priority = "recorder", "aligned-probe", 500

        def supports(self, call: CallSpec) -> Support:
            calls.append(call)
            return Support(True)

        def attention(self, q, k, v, *, causal=False, mask=None, scale=None):
            return q

        paged_attention = None

    module = types.SimpleNamespace(
        mistralrs_features=hookimpl(lambda: (FeatureManifest(name="aligned-probe", summary="records call specs",
                                                             distribution="test", provides=("attention",)),)),
        mistralrs_attention_backends=hookimpl(lambda active: (Recorder(),) if "aligned-probe" in active else ()))
    return types.SimpleNamespace(name="aligned_probe", value="aligned_probe", dist=None, load=lambda: module)


def test_the_runtime_passes_aligned_and_keys_its_cache_on_it() -> None:
    calls: list[CallSpec] = []
    runtime = Runtime.create(environ={},
                             manager=PluginManager(entry_points=[_recorder_plugin(calls)], environ={}))
    q, k = torch.randn(1, 4, 5, 64), torch.randn(1, 2, 5, 64)
    runtime.attention(q, k, k, causal=True)
    runtime.attention(q, k, k, causal=True)
    assert [(c.gqa, c.aligned) for c in calls] == [(True, True)]
    runtime.attention(q[:, :, :1], k, k, causal=True)  # decode: one query, five keys
    runtime.attention(q[:, :, :2], k, k, causal=True)  # another unaligned length: same signature
    assert [c.aligned for c in calls] == [True, False]


# -- a known torch bug on compute capability 10.x --------------------------------------------------------

B200 = dataclasses.replace(H100, capability=(10, 0), gpu="NVIDIA B200")


def test_cudnn_attention_refuses_grouped_query_attention_on_blackwell_datacenter_gpus() -> None:
    backend = CudnnAttention(B200)
    assert _answer(backend) == ("grouped-query attention on compute capability 10.0: torch's cuDNN attention silently "
                                "corrupts it there (pytorch/pytorch#193893)")
    assert _answer(backend, gqa=False) == "ok"
    assert _answer(CudnnAttention(H100)) == "ok"


def test_cuda_sdpa_hands_torch_expanded_heads_on_blackwell_datacenter_gpus() -> None:
    call = _call()
    assert cuda_attention(H100).kernel_for(call) is None  # torch's SDPA as is
    assert cuda_attention(B200).kernel_for(_call(gqa=False)) is None
    kernel = cuda_attention(B200).kernel_for(call)
    assert kernel is _backends._expanded_heads_attention
    gen = torch.Generator().manual_seed(5)
    q, k, v = torch.randn(2, 8, 4, 64, generator=gen), torch.randn(2, 2, 9, 64, generator=gen), \
        torch.randn(2, 2, 9, 64, generator=gen)
    out = kernel(q, k, v, causal=True)
    expected = ref.attention_reference(q.double().numpy(), k.double().numpy(), v.double().numpy(), causal=True)
    assert np.abs(out.double().numpy() - expected).max() < 1e-4
