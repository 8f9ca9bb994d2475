"""cpu-native-layers and cpu-native-attention (the C kernels of _cpu_ops.c) against the float64 references.

Every case the registry holds for their ops runs through the verification
engine (run_case: the op's independent float64 numpy reference, the per-dtype
tolerances); further cases cover what the registry's leave out (strided
inputs, shuffled block tables, ragged sequences, several queries a sequence).
Where the kernels claim to round as torch rounds (bfloat16 and float16 rotary
embedding), they are compared with the generic torch backends bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mistralrs_torch._errors import OpInputError
from mistralrs_torch.generic import (
    CpuNativeAttention,
    CpuNativeLayers,
    GenericAttention,
    GenericLayers,
)
from mistralrs_torch.ops import CallSpec, op_spec
from mistralrs_torch.testing import TOLERANCES, references, run_case

DTYPES = ("float32", "bfloat16", "float16")
BACKENDS = {"rms_norm": CpuNativeLayers, "rotary_embedding": CpuNativeLayers, "paged_attention": CpuNativeAttention,
            "write_kv_cache": CpuNativeAttention}


def _cases() -> list[tuple[str, object]]:
    return [(op, case) for op in BACKENDS for case in op_spec(op).load_cases()()]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("op", "case"), _cases(), ids=lambda v: getattr(v, "name", v))
def test_every_registry_case_matches_the_float64_reference(op: str, case: object, dtype: str) -> None:
    result = run_case(BACKENDS[op](), op_spec(op), case, dtype, "cpu")  # type: ignore[arg-type]
    assert result.status == "verified", result.detail


@pytest.mark.parametrize(("backend", "op"), [(CpuNativeLayers, "rms_norm"), (CpuNativeAttention, "paged_attention")])
def test_float64_is_refused_with_the_reason(backend: type, op: str) -> None:
    support = backend().supports(CallSpec(op, "float64", "cpu"))
    assert not support.ok
    assert "dtype float64 is not one of float32, bfloat16, float16" in support.reason
    assert "the generic backends take float64" in support.reason


def test_dense_attention_is_left_to_cpu_attention_and_refused_if_asked() -> None:
    backend = CpuNativeAttention()
    assert backend.attention is None  # not a candidate: the dispatcher passes it over without a fallback
    support = backend.supports(CallSpec("attention", "float32", "cpu", head_size=64))
    assert not support.ok and support.reason == "cpu-native-attention does not implement attention"


def _within(got: torch.Tensor, expected: np.ndarray, dtype: str) -> None:
    diff = got.double().numpy() - expected
    tolerance = TOLERANCES[dtype]
    assert np.abs(diff).max() / np.abs(expected).max() <= tolerance.max_error
    assert np.linalg.norm(diff) / np.linalg.norm(expected) <= tolerance.rms_error


def _paged_inputs(dtype: torch.dtype, lens: list[int], q_len: int, gen: torch.Generator,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    block_size, kv_heads, heads, head = 4, 2, 6, 40  # a head size that is not a multiple of 8: the scalar tails
    width = max(-(-n // block_size) for n in lens)
    blocks = torch.randperm(len(lens) * width + 3, generator=gen)  # blocks scattered over the cache
    table = blocks[: len(lens) * width].reshape(len(lens), width).to(torch.int32)
    k_cache = torch.randn(len(blocks), block_size, kv_heads, head, generator=gen).to(dtype)
    v_cache = torch.randn(len(blocks), block_size, kv_heads, head, generator=gen).to(dtype)
    # q as a view: transposed (the projection's (tokens, heads, head) rows) and sliced out of wider rows.
    q = torch.randn(len(lens), q_len, heads, 2 * head, generator=gen).to(dtype).transpose(1, 2)[..., :head]
    return q, k_cache, v_cache, table, torch.tensor(lens, dtype=torch.int32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("lens", "q_len"), [([1, 9, 4], 1), ([7, 13], 3), ([30], 1)])
def test_paged_attention_reads_scattered_blocks_and_strided_queries(dtype: str, lens: list[int],
                                                                     q_len: int) -> None:
    q, k_cache, v_cache, table, seq_lens = _paged_inputs(getattr(torch, dtype), lens, q_len,
                                                         torch.Generator().manual_seed(len(lens) * 10 + q_len))
    assert not q.is_contiguous()
    backend = CpuNativeAttention()
    assert backend.supports(CallSpec("paged_attention", dtype, "cpu", head_size=40, mask="causal", gqa=True,
                                     block_size=4)).ok
    for scale in (None, 0.3):
        got = backend.paged_attention(q, k_cache, v_cache, table, seq_lens, scale=scale)
        assert got.shape == q.shape and got.dtype == q.dtype and got.is_contiguous()
        expected = references.paged_attention_reference(*(t.double().numpy() if t.is_floating_point() else t.numpy()
                                                          for t in (q, k_cache, v_cache, table, seq_lens)),
                                                        scale=scale)
        _within(got, expected, dtype)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_rotary_rounds_as_torch_does_bit_for_bit(dtype: str) -> None:
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 12, 9, 64, generator=gen).to(getattr(torch, dtype)).transpose(1, 2)  # (1, 9, 12, 64) view
    k = torch.randn(1, 12, 3, 64, generator=gen).to(getattr(torch, dtype)).transpose(1, 2)
    positions = torch.arange(300, 312)[None]
    inv_freq = 1.0 / 10000 ** (torch.arange(0, 64, 2).float() / 64)
    native = CpuNativeLayers()
    assert native.supports(CallSpec("rotary_embedding", dtype, "cpu", head_size=64)).ok
    got, expected = native.rotary_embedding(q, k, positions, inv_freq), GenericLayers().rotary_embedding(
        q, k, positions, inv_freq)
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)
    assert got[0].stride() == q.stride()  # the projection's layout is kept: the cache write reads rows


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_over_several_leading_dimensions_and_a_weight_of_another_dtype(dtype: str) -> None:
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(2, 3, 100, generator=gen) * 4).to(getattr(torch, dtype))  # 100: not a multiple of 8
    weight = torch.randn(100, generator=gen)  # float32: the contract casts it to x's dtype
    native = CpuNativeLayers()
    assert native.supports(CallSpec("rms_norm", dtype, "cpu")).ok
    got = native.rms_norm(x, weight, 1e-5)
    assert got.shape == x.shape and got.dtype == x.dtype
    _within(got, references.rms_norm_reference(x.double().numpy(), weight.to(x.dtype).double().numpy(), 1e-5),
            dtype)
    generic = GenericLayers().rms_norm(x, weight, 1e-5)
    # Sums in another order may move a rounding by one unit of the last place, never more.
    ulp = {"float32": 2e-6, "bfloat16": 2 ** -7, "float16": 2 ** -10}[dtype]
    assert ((got.double() - generic.double()).abs() <= ulp * generic.double().abs() * 1.01 + 1e-30).all()


def test_write_kv_cache_skips_minus_one_and_rejects_a_slot_outside_the_cache_writing_nothing() -> None:
    backend = CpuNativeAttention()
    assert backend.supports(CallSpec("write_kv_cache", "bfloat16", "cpu", head_size=8, block_size=4)).ok
    k_cache, v_cache = torch.zeros(3, 4, 2, 8, dtype=torch.bfloat16), torch.zeros(3, 4, 2, 8, dtype=torch.bfloat16)
    k = torch.arange(3 * 16, dtype=torch.bfloat16).reshape(3, 2, 8)
    v = -k
    for slots in (torch.tensor([5, -1, 11]), torch.tensor([5, -1, 11], dtype=torch.int32)):
        k_cache.zero_(), v_cache.zero_()
        backend.write_kv_cache(k, v, k_cache, v_cache, slots)
        assert torch.equal(k_cache[1, 1], k[0]) and torch.equal(k_cache[2, 3], k[2])
        assert torch.equal(v_cache[1, 1], v[0]) and torch.equal(v_cache[2, 3], v[2])
        assert int((k_cache != 0).sum()) == 2 * 16 - 1  # k[0] holds a single zero; nothing else was written
    k_cache.zero_()
    with pytest.raises(OpInputError, match=r"slot_mapping holds a slot outside the cache's 0\.\.11"):
        backend.write_kv_cache(k, v, k_cache, v_cache, torch.tensor([5, 12, 1]))
    assert not k_cache.any()


def test_generic_and_native_paged_attention_agree_on_a_decode_step() -> None:
    # The model's decode call: one query per sequence, ragged lengths, float32 to float32 exactness.
    q, k_cache, v_cache, table, lens = _paged_inputs(torch.float32, [17, 5], 1, torch.Generator().manual_seed(9))
    native, generic = CpuNativeAttention(), GenericAttention()
    assert native.supports(CallSpec("paged_attention", "float32", "cpu", head_size=40)).ok
    torch.testing.assert_close(native.paged_attention(q, k_cache, v_cache, table, lens),
                               generic.paged_attention(q, k_cache, v_cache, table, lens), rtol=1e-5, atol=1e-6)


def test_without_a_compiler_both_refuse_and_name_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    for backend, call in ((CpuNativeLayers(), CallSpec("rms_norm", "float32", "cpu")),
                          (CpuNativeAttention(), CallSpec("paged_attention", "float32", "cpu", head_size=64))):
        support = backend.supports(call)
        assert not support.ok and "apt install gcc" in support.reason


def test_the_plain_c_build_computes_the_contract(plain_c_compiler: Path) -> None:
    # A compiler that drops -march=native builds the scalar path, as on a CPU without AVX2: it is slower but
    # still far cheaper than plain torch's many ops at decode sizes, so it is not refused; it must be right.
    for op, case in _cases():
        for dtype in DTYPES:
            result = run_case(BACKENDS[op](), op_spec(op), case, dtype, "cpu")  # type: ignore[arg-type]
            assert result.status == "verified", (case, dtype, result.detail)
    assert len(list(plain_c_compiler.iterdir())) == 1  # the plain build was made and used
