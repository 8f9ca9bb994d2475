"""The flash-attn and FlashAttention-3 call paths against stand-in modules that keep the real signatures.

No GPU is needed: each stand-in function has the exact parameter list of the
real one (copied from Dao-AILab/flash-attention at the version named), checks
what the real C++ checks (layout, dtypes, int32 block tables, block-size rules)
and computes with the core's CPU attention. A wrong keyword, a forgotten
transpose, an int64 block table or an unpacked return tuple fails here.
"""

from __future__ import annotations

import inspect
import sys
import types

import numpy as np
import pytest
import torch

from mistralrs_torch.generic import dense_attention
from mistralrs_torch.ops import CallSpec, op_spec
from mistralrs_torch.system import GPUFacts
from mistralrs_torch.testing import references as ref
from mistralrs_torch_flash_attn._backends import FlashAttention2
from mistralrs_torch_flash_attn._select import flash_attn_backend, flash_attn_v3_backend

HOPPER = GPUFacts((9, 0), "NVIDIA H100 80GB HBM3")
AMPERE = GPUFacts((8, 0), "NVIDIA A100-SXM4-80GB")
CALLS: list[tuple[str, dict]] = []


# -- what the real kernels check before they run -------------------------------------------------

def _check_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    assert q.dtype in (torch.float16, torch.bfloat16), "FlashAttention only support fp16 and bf16 data type"
    assert k.dtype == q.dtype and v.dtype == q.dtype, "query and key must have the same dtype"
    for t in (q, k, v):
        assert t.dim() == 4 and t.stride(-1) == 1, "Input tensor must have contiguous last dimension"
    batch, _, heads, head = q.shape
    assert k.shape[0] == batch and k.shape[3] == head and v.shape == k.shape, "shapes (batch, seq, heads, headdim)"
    assert head <= 256, "FlashAttention forward only supports head dimension at most 256"
    assert heads % k.shape[2] == 0, "Number of heads in key/value must divide number of heads in query"


def _bshd_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None, causal: bool
) -> torch.Tensor:
    """flash-attn's semantics in its own layout: (batch, seq, heads, D), bottom-right causal, GQA."""
    out = dense_attention(q.transpose(1, 2).float(), k.transpose(1, 2).float(), v.transpose(1, 2).float(),
                          causal=causal, scale=scale)
    return out.transpose(1, 2).to(q.dtype).contiguous()


def _gather(cache: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(blocks, block size, kv heads, D) + (batch, max blocks) -> (batch, kv heads, max blocks * block size, D)."""
    batch, width = table.shape
    return cache[table.long()].reshape(batch, width * cache.shape[1], *cache.shape[2:]).transpose(1, 2)


def _paged(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, table: torch.Tensor, lens: torch.Tensor,
           scale: float | None, causal: bool) -> torch.Tensor:
    k = _gather(k_cache, table).float()  # (batch, kv heads, blocks * block size, D)
    v = _gather(v_cache, table).float()
    q_len, k_len = q.shape[1], k.shape[2]
    positions = torch.arange(k_len)[None, None, :]
    limit = lens.long()[:, None, None]
    valid = positions < limit  # (batch, 1, k_len)
    allowed = valid & (positions <= limit - q_len + torch.arange(q_len)[None, :, None]) if causal else valid
    k, v = (torch.where(valid[:, :, :, None], t, 0) for t in (k, v))  # slots past the end may hold garbage
    out = dense_attention(q.transpose(1, 2).float(), k, v, mask=allowed[:, None], scale=scale)
    return out.transpose(1, 2).to(q.dtype).contiguous()


def _check_paged(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: object,
                 table: torch.Tensor, table_name: str) -> None:
    assert q.dtype in (torch.float16, torch.bfloat16), "FlashAttention only support fp16 and bf16 data type"
    assert k_cache.dtype == q.dtype and v_cache.dtype == q.dtype, "query and key must have the same dtype"
    assert q.dim() == 4 and q.stride(-1) == 1, "Input tensor must have contiguous last dimension"
    assert k_cache.dim() == 4 and k_cache.shape == v_cache.shape, "(num_blocks, page_block_size, nheads_k, headdim)"
    assert k_cache.shape[3] == q.shape[3] <= 256, "FlashAttention forward only supports head dimension at most 256"
    assert q.shape[2] % k_cache.shape[2] == 0, "Number of heads in key/value must divide number of heads in query"
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1, "k_cache must have contiguous last dimension"
    assert table.dtype == torch.int32, f"{table_name} must have dtype torch.int32"
    assert table.stride(-1) == 1, f"{table_name} must have contiguous last dimension"
    assert table.shape[0] == q.shape[0], "batch_size must be equal to batch_size_k"
    assert isinstance(cache_seqlens, torch.Tensor) and cache_seqlens.dtype == torch.int32, \
        "cache_seqlens must have dtype int32"
    assert cache_seqlens.device == q.device and table.device == q.device, "tensors must be on q's device"


# -- flash-attn 2.7.4.post1 (flash_attn/flash_attn_interface.py; unchanged through 2.8.3) ---------

def fa2_flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                        alibi_slopes=None, deterministic=False, return_attn_probs=False):
    CALLS.append(("fa2.flash_attn_func", {"causal": causal, "softmax_scale": softmax_scale}))
    _check_dense(q, k, v)
    out = _bshd_attention(q, k, v, softmax_scale, causal)
    return (out, torch.zeros(1), torch.zeros(1)) if return_attn_probs else out


def fa2_flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                                cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                                softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False):
    CALLS.append(("fa2.flash_attn_with_kvcache", {"causal": causal}))
    assert block_table is not None and cache_batch_idx is None, "Paged KVcache does not support cache_batch_idx"
    _check_paged(q, k_cache, v_cache, cache_seqlens, block_table, "block_table")
    assert k_cache.shape[1] % 256 == 0, "Paged KV cache block size must be divisible by 256"
    out = _paged(q, k_cache, v_cache, block_table, cache_seqlens, softmax_scale, causal)
    return (out, torch.zeros(1)) if return_softmax_lse else out


# flash-attn before 2.5.0 had no paged KV cache (v2.4.2's parameter list).
def fa2_old_flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                                    cache_seqlens=None, cache_batch_idx=None, softmax_scale=None, causal=False,
                                    window_size=(-1, -1), rotary_interleaved=True, alibi_slopes=None, num_splits=0):
    raise AssertionError("a flash-attn without block_table must never be called for paged attention")


# -- FlashAttention-3, hopper/flash_attn_interface.py ---------------------------------------------

# Since 2025-08-29 (203b9b3d, "Allow returning LSE via kwarg"): returns out unless return_attn_probs.
def fa3_flash_attn_func(q, k, v, softmax_scale=None, causal=False, qv=None, q_descale=None, k_descale=None,
                        v_descale=None, window_size=(-1, -1), attention_chunk=0, softcap=0.0, num_splits=1,
                        pack_gqa=None, deterministic=False, sm_margin=0, return_attn_probs=False):
    CALLS.append(("fa3.flash_attn_func", {"causal": causal}))
    _check_dense(q, k, v)
    out = _bshd_attention(q, k, v, softmax_scale, causal)
    return (out, torch.zeros(1)) if return_attn_probs else out


# Before 2025-08-29 (e.g. 2025-08-28, 203b9b3d~1): always returned (out, softmax_lse).
def fa3_2025_flash_attn_func(q, k, v, softmax_scale=None, causal=False, qv=None, q_descale=None, k_descale=None,
                             v_descale=None, window_size=(-1, -1), attention_chunk=0, softcap=0.0, num_splits=1,
                             pack_gqa=None, deterministic=False, sm_margin=0):
    CALLS.append(("fa3-2025.flash_attn_func", {"causal": causal}))
    _check_dense(q, k, v)
    return _bshd_attention(q, k, v, softmax_scale, causal), torch.zeros(1)


def fa3_flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, qv=None, rotary_cos=None, rotary_sin=None,
                                cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, page_table=None,
                                cu_seqlens_q=None, cu_seqlens_k_new=None, max_seqlen_q=None, rotary_seqlens=None,
                                q_descale=None, k_descale=None, v_descale=None, softmax_scale=None, causal=False,
                                window_size=(-1, -1), attention_chunk=0, softcap=0.0, rotary_interleaved=True,
                                scheduler_metadata=None, num_splits=0, pack_gqa=None, sm_margin=0,
                                return_softmax_lse=False):
    CALLS.append(("fa3.flash_attn_with_kvcache", {"causal": causal}))
    assert page_table is not None
    _check_paged(q, k_cache, v_cache, cache_seqlens, page_table, "page_table")  # any page size since 2025-01
    out = _paged(q, k_cache, v_cache, page_table, cache_seqlens, softmax_scale, causal)
    return (out, torch.zeros(1)) if return_softmax_lse else out


# October 2024 (a5a75274): kvcache without paging, flash_attn_func returning (out, softmax_lse).
def fa3_2024_flash_attn_func(q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1), deterministic=False,
                             descale_q=None, descale_k=None, descale_v=None, gqa_parallel=False):
    CALLS.append(("fa3-2024.flash_attn_func", {"causal": causal}))
    _check_dense(q, k, v)
    return _bshd_attention(q, k, v, softmax_scale, causal), torch.zeros(1)


def fa3_2024_flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=None, cache_batch_idx=None,
                                     softmax_scale=None, causal=False, window_size=(-1, -1), num_splits=0,
                                     return_softmax_lse=False, gqa_parallel=None, max_seqlen_k_hint=None,
                                     descale_q=None, descale_k=None, descale_v=None):
    raise AssertionError("a FlashAttention-3 without page_table must never be called for paged attention")


#: The real parameter lists, as the upstream sources spell them, to prove the stand-ins did not drift.
REAL_PARAMETERS = {
    fa2_flash_attn_func: "q k v dropout_p softmax_scale causal window_size softcap alibi_slopes deterministic "
                         "return_attn_probs",
    fa2_flash_attn_with_kvcache: "q k_cache v_cache k v rotary_cos rotary_sin cache_seqlens cache_batch_idx "
                                 "cache_leftpad block_table softmax_scale causal window_size softcap "
                                 "rotary_interleaved alibi_slopes num_splits return_softmax_lse",
    fa3_flash_attn_func: "q k v softmax_scale causal qv q_descale k_descale v_descale window_size attention_chunk "
                         "softcap num_splits pack_gqa deterministic sm_margin return_attn_probs",
    fa3_flash_attn_with_kvcache: "q k_cache v_cache k v qv rotary_cos rotary_sin cache_seqlens cache_batch_idx "
                                 "cache_leftpad page_table cu_seqlens_q cu_seqlens_k_new max_seqlen_q rotary_seqlens "
                                 "q_descale k_descale v_descale softmax_scale causal window_size attention_chunk "
                                 "softcap rotary_interleaved scheduler_metadata num_splits pack_gqa sm_margin "
                                 "return_softmax_lse",
}


def _module(name: str, **functions: object) -> types.ModuleType:
    module = types.ModuleType(name)
    for attribute, function in functions.items():
        setattr(module, attribute, function)
    return module


FA2 = {"flash_attn_func": fa2_flash_attn_func, "flash_attn_with_kvcache": fa2_flash_attn_with_kvcache}
FA2_OLD = {"flash_attn_func": fa2_flash_attn_func, "flash_attn_with_kvcache": fa2_old_flash_attn_with_kvcache}
FA3 = {"flash_attn_func": fa3_flash_attn_func, "flash_attn_with_kvcache": fa3_flash_attn_with_kvcache}
FA3_2025 = {"flash_attn_func": fa3_2025_flash_attn_func, "flash_attn_with_kvcache": fa3_flash_attn_with_kvcache}
FA3_2024 = {"flash_attn_func": fa3_2024_flash_attn_func, "flash_attn_with_kvcache": fa3_2024_flash_attn_with_kvcache}


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    CALLS.clear()


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch):
    """install("flash_attn", FA2, __version__="2.7.4.post1") puts a stand-in module in sys.modules."""

    def put(name: str, functions: dict, **attributes: object) -> types.ModuleType:
        module = _module(name, **functions)
        for attribute, value in attributes.items():
            setattr(module, attribute, value)
        monkeypatch.setitem(sys.modules, name, module)
        return module

    return put


def _dense_inputs(q_len: int, k_len: int, heads: int = 4, kv_heads: int = 2, head: int = 64,
                  dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(q_len * 100 + k_len)
    return (torch.randn(2, heads, q_len, head, generator=gen).to(dtype),
            torch.randn(2, kv_heads, k_len, head, generator=gen).to(dtype),
            torch.randn(2, kv_heads, k_len, head, generator=gen).to(dtype))


def _paged_inputs(block_size: int, lens: tuple[int, ...], q_len: int = 1, heads: int = 4, kv_heads: int = 2,
                  head: int = 64, dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(block_size + q_len)
    per_seq = -(-max(lens) // block_size)
    blocks = len(lens) * per_seq + 1
    k_cache = torch.randn(blocks, block_size, kv_heads, head, generator=gen).to(dtype)
    v_cache = torch.randn(blocks, block_size, kv_heads, head, generator=gen).to(dtype)
    table = torch.randperm(blocks, generator=gen)[: len(lens) * per_seq].to(torch.int32).reshape(len(lens), per_seq)
    q = torch.randn(len(lens), heads, q_len, head, generator=gen).to(dtype)
    return q, k_cache, v_cache, table, torch.tensor(lens, dtype=torch.int32)


def _error(out: torch.Tensor, expected: np.ndarray) -> float:
    got = out.detach().double().numpy()
    assert got.shape == expected.shape, (got.shape, expected.shape)
    return float(np.abs(got - expected).max() / max(1.0, np.abs(expected).max()))


def _numpy(*tensors: torch.Tensor) -> list[np.ndarray]:
    return [t.double().numpy() if t.is_floating_point() else t.numpy() for t in tensors]


# -- the stand-ins themselves ------------------------------------------------------------------------

@pytest.mark.parametrize("function", list(REAL_PARAMETERS), ids=lambda f: f.__name__)
def test_stand_ins_keep_the_real_parameter_lists(function) -> None:
    assert list(inspect.signature(function).parameters) == REAL_PARAMETERS[function].split()


def test_stand_ins_reject_what_the_real_kernels_reject() -> None:
    q, k, v = (t.transpose(1, 2) for t in _dense_inputs(4, 4))
    with pytest.raises(AssertionError, match="fp16 and bf16"):
        fa2_flash_attn_func(q.float(), k.float(), v.float())
    with pytest.raises(TypeError):
        fa2_flash_attn_func(q, k, v, scale=0.1)  # the real keyword is softmax_scale
    q, k_cache, v_cache, table, lens = _paged_inputs(256, (5, 300))
    with pytest.raises(AssertionError, match=r"block_table must have dtype torch.int32"):
        fa2_flash_attn_with_kvcache(q.transpose(1, 2), k_cache, v_cache, cache_seqlens=lens, block_table=table.long())
    q16, k16, v16, table16, lens16 = _paged_inputs(16, (5, 20))
    with pytest.raises(AssertionError, match="divisible by 256"):
        fa2_flash_attn_with_kvcache(q16.transpose(1, 2), k16, v16, cache_seqlens=lens16, block_table=table16)
    with pytest.raises(TypeError):
        fa3_flash_attn_with_kvcache(q.transpose(1, 2), k_cache, v_cache, cache_seqlens=lens, block_table=table)


# -- FlashAttention-2 through the flash-attn package --------------------------------------------------

@pytest.mark.parametrize(("q_len", "k_len", "causal"), [(8, 8, True), (3, 9, True), (1, 17, True), (8, 8, False),
                                                        (5, 9, False)])
def test_flash_attn_dense_matches_the_reference_in_the_contract_layout(install, q_len, k_len, causal) -> None:
    install("flash_attn", FA2, __version__="2.7.4.post1")
    backend = flash_attn_backend(AMPERE)
    assert isinstance(backend, FlashAttention2) and backend.version == "2.7.4.post1"
    q, k, v = _dense_inputs(q_len, k_len)
    mask = "causal" if causal else "none"
    call = CallSpec("attention", "bfloat16", "cuda", 64, mask, gqa=True, aligned=q_len == k_len)
    assert backend.supports(call).ok
    out = backend.attention(q, k, v, causal=causal)
    assert out.shape == q.shape  # (batch, heads, seq, head size) back out
    assert _error(out, ref.attention_reference(*_numpy(q, k, v), causal=causal)) < 3e-2
    assert CALLS == [("fa2.flash_attn_func", {"causal": causal, "softmax_scale": None})]


def test_flash_attn_passes_an_explicit_scale_as_softmax_scale(install) -> None:
    install("flash_attn", FA2, __version__="2.7.4.post1")
    backend = flash_attn_backend(AMPERE)
    q, k, v = _dense_inputs(4, 6)
    out = backend.attention(q, k, v, causal=True, scale=0.05)
    assert CALLS[0][1]["softmax_scale"] == 0.05
    assert _error(out, ref.attention_reference(*_numpy(q, k, v), causal=True, scale=0.05)) < 3e-2


@pytest.mark.parametrize("q_len", [1, 3])
def test_flash_attn_paged_decode_goes_through_kvcache_with_an_int32_block_table(install, q_len) -> None:
    install("flash_attn", FA2, __version__="2.7.4.post1")
    backend = flash_attn_backend(AMPERE)
    q, k_cache, v_cache, table, lens = _paged_inputs(256, (5, 259, 3), q_len=q_len)
    call = CallSpec("paged_attention", "bfloat16", "cuda", 64, "causal", block_size=256, gqa=True)
    assert backend.supports(call).ok
    # Callers may hand over int64 tables and lengths; the backend passes int32, as flash-attn demands.
    out = backend.paged_attention(q, k_cache, v_cache, table.long(), lens.long())
    expected = ref.paged_attention_reference(*_numpy(q, k_cache, v_cache, table, lens))
    assert _error(out, expected) < 3e-2
    assert CALLS == [("fa2.flash_attn_with_kvcache", {"causal": True})]


def test_flash_attn_refuses_paged_blocks_that_are_not_multiples_of_256(install) -> None:
    install("flash_attn", FA2, __version__="2.7.4.post1")
    backend = flash_attn_backend(AMPERE)
    for block, ok in ((16, False), (128, False), (256, True), (512, True), (384, False)):
        support = backend.supports(
            CallSpec("paged_attention", "float16", "cuda", 128, "causal", block_size=block, gqa=False)
        )
        assert support.ok == ok, block
        if not ok:
            assert support.reason == (
                f"block size {block} is not a multiple of 256, which flash-attn's paged KV cache "
                "needs: allocate the cache in blocks of 256"
            )


def test_a_flash_attn_without_block_table_refuses_paged_attention_with_the_upgrade(install) -> None:
    install("flash_attn", FA2_OLD, __version__="2.4.2")
    backend = flash_attn_backend(AMPERE)
    support = backend.supports(CallSpec("paged_attention", "float16", "cuda", 64, "causal", block_size=256))
    assert not support.ok
    assert support.reason == (
        "flash-attn 2.4.2 has no flash_attn_with_kvcache(block_table=...) for paged KV caches: "
        "upgrade it (pip install -U flash-attn --no-build-isolation)"
    )
    assert backend.supports(CallSpec("attention", "float16", "cuda", 64, "causal", aligned=False)).ok


# -- FlashAttention-3 -------------------------------------------------------------------------------


@pytest.mark.parametrize("functions", [FA3, FA3_2025, FA3_2024], ids=["2026", "2025-08-28", "2024-10"])
@pytest.mark.parametrize(("q_len", "k_len"), [(8, 8), (1, 17), (3, 9)])
def test_flash_attention_3_dense_unpacks_either_return_shape(install, functions, q_len, k_len) -> None:
    install("flash_attn_interface", functions)
    backend = flash_attn_v3_backend(HOPPER)
    q, k, v = _dense_inputs(q_len, k_len, heads=8, kv_heads=2, head=128)
    assert backend.supports(
        CallSpec("attention", "bfloat16", "cuda", 128, "causal", gqa=True, aligned=q_len == k_len)
    ).ok
    out = backend.attention(q, k, v, causal=True)
    assert _error(out, ref.attention_reference(*_numpy(q, k, v), causal=True)) < 3e-2
    assert len(CALLS) == 1 and CALLS[0][0].endswith("flash_attn_func")


@pytest.mark.parametrize("block_size", [16, 64, 256])
def test_flash_attention_3_paged_uses_page_table_with_any_block_size(install, block_size) -> None:
    install("flash_attn_interface", FA3)
    backend = flash_attn_v3_backend(HOPPER)
    q, k_cache, v_cache, table, lens = _paged_inputs(block_size, (5, block_size + 3, 3))
    assert backend.supports(
        CallSpec("paged_attention", "float16", "cuda", 64, "causal", block_size=block_size, gqa=True)
    ).ok
    out = backend.paged_attention(q, k_cache, v_cache, table, lens)
    assert _error(out, ref.paged_attention_reference(*_numpy(q, k_cache, v_cache, table, lens))) < 3e-2
    assert CALLS == [("fa3.flash_attn_with_kvcache", {"causal": True})]


def test_flash_attention_3_without_page_table_refuses_paged_attention(install) -> None:
    install("flash_attn_interface", FA3_2024)
    backend = flash_attn_v3_backend(HOPPER)
    support = backend.supports(CallSpec("paged_attention", "bfloat16", "cuda", 64, "causal", block_size=256))
    assert not support.ok
    assert support.reason == (
        "this flash_attn_interface has no flash_attn_with_kvcache(page_table=...) for paged KV "
        "caches: rebuild FlashAttention-3 from a current checkout"
    )


# -- which implementation binds ----------------------------------------------------------------------


def test_without_the_package_flash_attn_binds_torchs_built_in_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # as if not installed: import raises ModuleNotFoundError
    backend = flash_attn_backend(AMPERE)
    assert backend.name == "flash-attn-torch" and backend.note == ""
    assert backend.paged_attention is None
    assert "built-in FlashAttention-2 kernel" in backend.implementation


def test_a_broken_flash_attn_install_is_named_not_silently_skipped(install) -> None:
    install("flash_attn", {})  # imports, but without flash_attn_func (a partial or foreign package)
    backend = flash_attn_backend(AMPERE)
    assert backend.name == "flash-attn-torch"
    assert backend.note == "flash-attn is installed but cannot be used (the flash_attn module has no flash_attn_func)"


def test_a_missing_flash_attention_3_refuses_every_call_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "flash_attn_interface", None)
    backend = flash_attn_v3_backend(HOPPER)
    support = backend.supports(CallSpec("attention", "bfloat16", "cuda", 128, "causal", aligned=True))
    assert not support.ok
    assert support.reason == (
        "FlashAttention-3 cannot run: flash_attn_3 is not installed (module flash_attn_interface not found): "
        "git clone https://github.com/Dao-AILab/flash-attention && cd flash-attention/hopper && python setup.py install"
    )


def test_a_flash_attention_3_that_fails_to_import_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    real = importlib.import_module

    def failing(name: str, *args: object) -> object:
        if name == "flash_attn_interface":
            raise ImportError("libcudart.so.13: cannot open shared object file")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", failing)
    backend = flash_attn_v3_backend(HOPPER)
    reason = backend.supports(CallSpec("attention", "bfloat16", "cuda", 128, "none", aligned=True)).reason
    assert reason.startswith(
        "FlashAttention-3 cannot run: flash_attn_interface does not import (ImportError: "
        "libcudart.so.13: cannot open shared object file): rebuild FlashAttention-3 against this "
        "torch: git clone"
    )


def test_the_runtime_records_the_fall_through_from_a_missing_flash_attention_3(monkeypatch: pytest.MonkeyPatch) -> None:
    from mistralrs_torch import FallbackError
    from mistralrs_torch.runtime import Dispatcher

    monkeypatch.setitem(sys.modules, "flash_attn_interface", None)
    fa3 = flash_attn_v3_backend(HOPPER)

    class Next:
        name, feature, dispatch_priority = "next", "cuda", 100

        def supports(self, call):
            from mistralrs_torch.ops import Support

            return Support(True)

        def attention(self, *args, **kwargs):
            return "next ran"

    call = CallSpec("attention", "bfloat16", "cuda", 128, "causal", aligned=True)
    dispatcher = Dispatcher(op_spec("attention"), (fa3, Next()), no_fallback=False, read_values=False)
    assert dispatcher.choose(call)[1]() == "next ran"
    (binding,) = dispatcher.bindings
    assert binding.is_fallback and binding.skipped[0][0] == "flash-attn-v3"
    assert "flash_attn_3 is not installed" in binding.describe()
    strict = Dispatcher(op_spec("attention"), (fa3, Next()), no_fallback=True, read_values=False)
    with pytest.raises(FallbackError, match="flash-attn-v3"):
        strict.choose(call)


# -- torch's built-in FlashAttention-2 kernel --------------------------------------------------------------


@pytest.mark.parametrize("causal", [True, False])
def test_torchs_flash_call_binds_to_the_ops_schema(monkeypatch: pytest.MonkeyPatch, causal: bool) -> None:
    # On meta tensors torch runs the op's own argument binding and shape rules without a GPU.
    from mistralrs_torch_flash_attn import _backends

    seen = []
    real = _backends._flash_op

    def spy(*args, **kwargs):
        seen.append((args[3:], kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(_backends, "_flash_op", spy)
    q, k, v = (torch.empty(2, h, 16, 128, device="meta", dtype=torch.float16) for h in (8, 2, 2))
    out = _backends.TorchFlashAttention.attention(q, k, v, causal=causal)
    assert out.shape == (2, 8, 16, 128) and out.dtype == torch.float16
    assert seen == [((0.0, causal, False), {"scale": 1 / np.sqrt(128)})]  # dropout_p, is_causal, return_debug_mask
