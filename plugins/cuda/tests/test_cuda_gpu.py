"""cuda and cudnn on a real NVIDIA GPU: every backend against the float64 CPU reference, fallbacks, devices, doctor.

Marked gpu: skipped where torch sees no NVIDIA GPU (the root conftest). None of
these needs NCCL or a second process.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mistralrs_torch.doctor import run_doctor
from mistralrs_torch.ops import CallSpec
from mistralrs_torch.runtime import Runtime
from mistralrs_torch.testing import TOLERANCES
from mistralrs_torch.testing import references as ref
from mistralrs_torch_cuda._backends import CudnnAttention, cuda_attention, cuda_matmul, torch_cudnn_check
from mistralrs_torch_cuda._facts import CudaFacts

pytestmark = pytest.mark.gpu
DTYPES = [torch.float16, torch.bfloat16]


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _error(out: torch.Tensor, expected: np.ndarray) -> float:
    got = out.detach().cpu().double().numpy()
    assert got.shape == expected.shape and np.isfinite(got).all()
    return float(np.abs(got - expected).max() / max(1.0, float(np.abs(expected).max())))


def _dense(q_len: int, k_len: int, heads: int = 8, kv_heads: int = 2, head: int = 128, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(2, heads, q_len, head, generator=gen), torch.randn(2, kv_heads, k_len, head, generator=gen),
            torch.randn(2, kv_heads, k_len, head, generator=gen))


def _on_gpu(dtype: torch.dtype, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.to("cuda", dtype) if t.is_floating_point() else t.to("cuda") for t in tensors]


def _reference(dtype: torch.dtype, *tensors: torch.Tensor, **kwargs) -> np.ndarray:
    # The reference sees the inputs rounded to the dtype under test, as the kernel did.
    arrays = [t.to(dtype).double().numpy() if t.is_floating_point() else t.numpy() for t in tensors]
    return ref.attention_reference(*arrays, **kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("q_len", "k_len", "causal"), [(128, 128, True), (1, 77, True), (3, 64, True),
                                                        (64, 64, False), (1, 300, False)])
def test_cuda_sdpa_matches_the_reference(dtype: torch.dtype, q_len: int, k_len: int, causal: bool) -> None:
    q, k, v = _dense(q_len, k_len)
    out = cuda_attention().attention(*_on_gpu(dtype, q, k, v), causal=causal)
    assert _error(out, _reference(dtype, q, k, v, causal=causal)) <= TOLERANCES[_name(dtype)].max_error


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("q_len", "k_len", "causal", "head"), [(128, 128, True, 128), (64, 64, True, 64),
                                                                (1, 300, False, 128), (200, 200, False, 64),
                                                                (5, 1, False, 64), (1, 1, True, 128)])
def test_cudnn_attention_matches_the_reference_where_it_claims_the_call(dtype, q_len, k_len, causal, head) -> None:
    backend = CudnnAttention(CudaFacts.from_torch(), torch_cudnn_check)
    call = CallSpec("attention", _name(dtype), "cuda", head, "causal" if causal else "none",
                    gqa=True, aligned=q_len == k_len)
    support = backend.supports(call)
    if torch.cuda.get_device_capability() < (8, 0) or torch.cuda.get_device_capability()[0] == 10:
        # Below Ampere cuDNN attention cannot run; on 10.x it refuses grouped-query calls (pytorch#193893).
        assert not support.ok and ("compute capability" in support.reason or "#193893" in support.reason)
        pytest.skip(support.reason)
    assert support.ok, f"cuDNN refused a call it should run on {torch.cuda.get_device_name()}: {support.reason}"
    q, k, v = _dense(q_len, k_len, head=head)
    out = backend.attention(*_on_gpu(dtype, q, k, v), causal=causal)
    assert _error(out, _reference(dtype, q, k, v, causal=causal)) <= TOLERANCES[_name(dtype)].max_error


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [16, 256])
def test_cuda_paged_attention_matches_the_reference(dtype: torch.dtype, block_size: int) -> None:
    gen = torch.Generator().manual_seed(1)
    lens = (5, block_size + 3, 3)
    per_seq = -(-max(lens) // block_size)
    blocks = len(lens) * per_seq + 1
    k_cache, v_cache = (torch.randn(blocks, block_size, 2, 128, generator=gen) for _ in range(2))
    table = torch.randperm(blocks, generator=gen)[: len(lens) * per_seq].to(torch.int32).reshape(len(lens), per_seq)
    q, seq_lens = torch.randn(len(lens), 8, 1, 128, generator=gen), torch.tensor(lens, dtype=torch.int32)
    out = cuda_attention().paged_attention(*_on_gpu(dtype, q, k_cache, v_cache, table, seq_lens))
    expected = ref.paged_attention_reference(*(t.to(dtype).double().numpy() if t.is_floating_point() else t.numpy()
                                               for t in (q, k_cache, v_cache, table, seq_lens)))
    assert _error(out, expected) <= TOLERANCES[_name(dtype)].max_error


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matmul_and_int8_match_the_reference(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(2)
    x, w, b = (
        torch.randn(7, 256, generator=gen),
        torch.randn(96, 256, generator=gen) / 16,
        torch.randn(96, generator=gen),
    )
    out = cuda_matmul().linear(*_on_gpu(dtype, x, w, b))
    expected = ref.linear_reference(*(t.to(dtype).double().numpy() for t in (x, w, b)))
    assert _error(out, expected) <= TOLERANCES[_name(dtype)].max_error
    w8 = torch.randint(-127, 128, (96, 256), generator=gen, dtype=torch.int8)
    scale = torch.rand(96, generator=gen) * 0.01 + 0.001
    out8 = cuda_matmul().int8_linear(*_on_gpu(dtype, x, w8, scale))
    expected8 = ref.int8_linear_reference(x.to(dtype).double().numpy(), w8.numpy(), scale.to(dtype).double().numpy())
    assert _error(out8, expected8) <= TOLERANCES[_name(dtype)].max_error


def test_the_runtime_binds_the_gpu_and_records_why_cudnn_was_skipped() -> None:
    flags = torch.backends.cudnn.enabled, torch.backends.cuda.cudnn_sdp_enabled()
    runtime = Runtime.create(features="cuda cudnn", environ={})
    assert runtime.device.torch_device == "cuda:0" and "compute capability" in runtime.device.name
    assert runtime.device.memory_total > 0
    assert (torch.backends.cudnn.enabled, torch.backends.cuda.cudnn_sdp_enabled()) == flags  # binding sets no flag
    q, k, v = _on_gpu(torch.bfloat16, *_dense(1, 64))
    runtime.attention(q, k, v, causal=True)  # decode: cuDNN's top-left causal cannot take it
    (binding,) = runtime.bindings
    assert binding.chosen == "cuda-sdpa"
    assert binding.skipped == (
        (
            "cudnn-attention",
            "cudnn",
            "causal attention with a query shorter or longer than the "
            "keys: cuDNN aligns the causal mask top-left, the op contract bottom-right",
        ),
    )
    assert runtime.communicator().world_size == 1  # no NCCL involved


def test_doctor_verifies_every_bound_nvidia_backend_on_this_gpu() -> None:
    report = run_doctor(environ={})
    assert report.exit_code == 0, (report.errors, report.failed)
    verified = {(v.backend, v.op) for v in report.verifications if v.result == "verified"}
    assert {
        ("cuda-sdpa", "attention"),
        ("cuda-sdpa", "paged_attention"),
        ("cuda-matmul", "linear"),
        ("cuda-matmul", "int8_linear"),
    } <= verified
    capability = torch.cuda.get_device_capability()
    if capability >= (8, 0) and capability[0] != 10:  # doctor's cases are grouped-query: refused on 10.x
        assert ("cudnn-attention", "attention") in verified


def test_the_conformance_kit_passes_on_this_gpu() -> None:
    from mistralrs_torch.testing import run_kit

    results = run_kit("cuda")
    assert not [r for r in results if r.status == "failed"], [r for r in results if r.status == "failed"]
    assert any(
        r.status == "passed" and "cudnn-attention" in r.check for r in results
    ) or torch.cuda.get_device_capability() < (8, 0)
