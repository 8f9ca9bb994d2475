"""The generic CPU backend against independent float64 references computed here.

The references below are written from the op contract (DESIGN.md, "Op
conventions") with explicit per-head / per-row numpy loops, not with torch and
not with mistralrs_torch.doctor._reference (that one is cross-checked, not trusted).
A few tiny cases are computed by hand.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mistralrs_torch import ConfigError, MistralrsError
from mistralrs_torch._errors import UnsupportedCallError
from mistralrs_torch.generic import (
    GenericAttention,
    GenericMatmul,
    SingleProcessCollectives,
    SingleProcessCommunicator,
    bottom_right_causal_mask,
    dense_attention,
    dequantize_int8,
    paged_gather_plan,
)
from mistralrs_torch.ops import AttentionBackend, CallSpec, CollectiveBackend, Communicator, MatmulBackend
from mistralrs_torch.runtime import TensorSlice, load_safetensors

#: Relative tolerance (|got - ref| / max(1, |ref|max)) per dtype.
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 3e-2}
DTYPES = [torch.float32, torch.bfloat16]


# ---------------------------------------------------------------------------------------------
# independent references (numpy float64, explicit loops over batch and heads)
# ---------------------------------------------------------------------------------------------

def ref_attention(q, k, v, *, causal=False, mask=None, scale=None):
    """softmax(q k^T * scale [+ mask]) v, loop over (batch, q head); kv head = q head // (Hq / Hkv).

    ``mask``: None, a bool array (True = allowed) or a float additive array, broadcastable to
    (B, Hq, Lq, Lk). Causal alignment is bottom-right: query row i sees keys j <= i + Lk - Lq.
    """
    q, k, v = (np.asarray(t, dtype=np.float64) for t in (q, k, v))
    batch, hq, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    assert hq % hkv == 0
    group = hq // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    full_mask = None if mask is None else np.broadcast_to(np.asarray(mask), (batch, hq, lq, lk))
    out = np.zeros((batch, hq, lq, v.shape[-1]))
    for b in range(batch):
        for h in range(hq):
            kv = h // group
            for i in range(lq):
                scores = np.array([q[b, h, i] @ k[b, kv, j] * scale for j in range(lk)])
                allowed = np.ones(lk, dtype=bool)
                if causal:
                    allowed &= np.arange(lk) <= i + (lk - lq)
                if full_mask is not None:
                    if full_mask.dtype == bool:
                        allowed &= full_mask[b, h, i]
                    else:
                        scores = scores + full_mask[b, h, i].astype(np.float64)
                scores = np.where(allowed, scores, -np.inf)
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                out[b, h, i] = weights @ v[b, kv]
    return out


def ref_linear(x, w, b=None):
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    out = np.zeros((*x.shape[:-1], w.shape[0]))
    flat_x, flat_out = x.reshape(-1, x.shape[-1]), out.reshape(-1, w.shape[0])
    for r in range(flat_x.shape[0]):
        for o in range(w.shape[0]):
            flat_out[r, o] = sum(flat_x[r, j] * w[o, j] for j in range(w.shape[1]))
            if b is not None:
                flat_out[r, o] += float(b[o])
    return out


def ref_int8_linear(x, w_int8, scale, b=None):
    w = np.asarray(w_int8, dtype=np.int64).astype(np.float64) * np.asarray(scale, np.float64)[:, None]
    return ref_linear(x, w, b)


def np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy() if t.is_floating_point() else t.detach().numpy()


def rel_error(got: torch.Tensor, expected: np.ndarray) -> float:
    got64 = got.detach().double().numpy()
    assert got64.shape == expected.shape, (got64.shape, expected.shape)
    assert np.isfinite(got64).all(), "output has NaN or inf"
    return float(np.abs(got64 - expected).max() / max(1.0, np.abs(expected).max()))


def randn(*shape: int, gen: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


# ---------------------------------------------------------------------------------------------
# hand-computed cases
# ---------------------------------------------------------------------------------------------

def test_bottom_right_causal_mask_by_hand() -> None:
    assert bottom_right_causal_mask(2, 3).tolist() == [[True, True, False], [True, True, True]]
    assert bottom_right_causal_mask(1, 4).tolist() == [[True, True, True, True]]
    assert bottom_right_causal_mask(3, 3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_causal_with_shorter_query_aligns_bottom_right_by_hand(dtype: torch.dtype) -> None:
    # q = 0: every allowed key gets the same score, so each row is the mean of the values it sees.
    q = torch.zeros(1, 1, 2, 1, dtype=dtype)
    k = torch.zeros(1, 1, 3, 1, dtype=dtype)
    v = torch.tensor([1.0, 2.0, 4.0], dtype=dtype).reshape(1, 1, 3, 1)
    out = dense_attention(q, k, v, causal=True).reshape(2).double()
    # Bottom-right: row 0 sees keys 0..1 (mean 1.5), the last row sees every key (7/3).
    # (Top-left alignment would give 1.0 and 1.5.)
    torch.testing.assert_close(out, torch.tensor([1.5, 7.0 / 3.0], dtype=torch.float64), rtol=1e-6, atol=1e-6)


def test_causal_decode_row_sees_every_key_by_hand() -> None:
    q = torch.zeros(1, 1, 1, 2)
    k = torch.zeros(1, 1, 4, 2)
    v = torch.tensor([1.0, 2.0, 3.0, 10.0]).reshape(1, 1, 4, 1).expand(1, 1, 4, 2).contiguous()
    out = dense_attention(q, k, v, causal=True)
    torch.testing.assert_close(out, torch.full((1, 1, 1, 2), 4.0))


@pytest.mark.parametrize(("scale", "expected"), [(1.0, 0.75), (2.0, 0.9), (None, 3.0 / (1.0 + 3.0))])
def test_softmax_scale_by_hand(scale: float | None, expected: float) -> None:
    # One query (1.0), keys 0 and ln 3, values 0 and 1: weights softmax(0, s ln3) = (1, 3^s) / (1 + 3^s).
    # head size 1, so the default scale 1/sqrt(1) = 1.
    q = torch.tensor([[[[1.0]]]], dtype=torch.float64)
    k = torch.tensor([0.0, math.log(3.0)], dtype=torch.float64).reshape(1, 1, 2, 1)
    v = torch.tensor([0.0, 1.0], dtype=torch.float64).reshape(1, 1, 2, 1)
    out = dense_attention(q, k, v, scale=scale)
    assert out.item() == pytest.approx(expected, rel=1e-12)


def test_gqa_head_mapping_by_hand() -> None:
    # 4 query heads, 2 kv heads: heads 0,1 read kv head 0 (value 1.0), heads 2,3 read kv head 1 (value 5.0).
    q = torch.zeros(1, 4, 1, 2)
    k = torch.zeros(1, 2, 3, 2)
    v = torch.stack([torch.full((3, 2), 1.0), torch.full((3, 2), 5.0)])[None]
    out = dense_attention(q, k, v)
    assert out[0, :, 0, 0].tolist() == [1.0, 1.0, 5.0, 5.0]


def test_reference_in_this_file_matches_doctor_reference(gen: torch.Generator) -> None:
    """Cross-check: two independently written float64 references agree (GQA, causal, ragged)."""
    from mistralrs_torch.testing import references as doctor_ref

    q, k, v = randn(2, 8, 3, 8, gen=gen, dtype=torch.float64), randn(2, 2, 7, 8, gen=gen, dtype=torch.float64), \
        randn(2, 2, 7, 8, gen=gen, dtype=torch.float64)
    mine = ref_attention(np64(q), np64(k), np64(v), causal=True, scale=0.2)
    theirs = doctor_ref.attention_reference(np64(q), np64(k), np64(v), causal=True, scale=0.2)
    np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# dense attention
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("q_len", "k_len"), [(6, 6), (3, 11), (1, 9)])
@pytest.mark.parametrize("causal", [False, True])
def test_dense_gqa_matches_float64_reference(dtype: torch.dtype, q_len: int, k_len: int, causal: bool,
                                             gen: torch.Generator) -> None:
    q = randn(2, 8, q_len, 16, gen=gen, dtype=dtype)
    k = randn(2, 2, k_len, 16, gen=gen, dtype=dtype)
    v = randn(2, 2, k_len, 16, gen=gen, dtype=dtype)
    out = GenericAttention().attention(q, k, v, causal=causal)
    assert out.dtype == dtype and out.shape == (2, 8, q_len, 16)
    expected = ref_attention(np64(q), np64(k), np64(v), causal=causal)
    assert rel_error(out, expected) <= TOL[dtype]


def test_causal_is_not_top_left_when_query_is_shorter(gen: torch.Generator) -> None:
    """A top-left causal implementation would differ clearly from bottom-right here."""
    q, k, v = randn(1, 2, 3, 8, gen=gen), randn(1, 2, 10, 8, gen=gen), randn(1, 2, 10, 8, gen=gen)
    out = dense_attention(q, k, v, causal=True)
    top_left = np.tril(np.ones((3, 10), dtype=bool))
    wrong = ref_attention(np64(q), np64(k), np64(v), mask=top_left)
    assert np.abs(out.double().numpy() - wrong).max() > 1e-2
    assert rel_error(out, ref_attention(np64(q), np64(k), np64(v), causal=True)) <= TOL[torch.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("q_len", "k_len"), [(7, 7), (2, 7)])
def test_causal_with_bool_padding_mask(dtype: torch.dtype, q_len: int, k_len: int, gen: torch.Generator) -> None:
    # Sequence 0 has no padding; sequence 1's last two key positions are padding (right padding,
    # so that no query row is left with every key masked).
    q = randn(2, 8, q_len, 16, gen=gen, dtype=dtype)
    k = randn(2, 2, k_len, 16, gen=gen, dtype=dtype)
    v = randn(2, 2, k_len, 16, gen=gen, dtype=dtype)
    padding = torch.ones(2, 1, 1, k_len, dtype=torch.bool)
    padding[1, ..., k_len - 2:] = False
    out = dense_attention(q, k, v, causal=True, mask=padding)
    expected = ref_attention(np64(q), np64(k), np64(v), causal=True, mask=padding.numpy())
    assert rel_error(out, expected) <= TOL[dtype]
    # The padding changed the result of sequence 1 only.
    unpadded = dense_attention(q, k, v, causal=True)
    torch.testing.assert_close(out[0], unpadded[0])
    assert not torch.allclose(out[1, :, -1], unpadded[1, :, -1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_float_additive_mask(dtype: torch.dtype, causal: bool, gen: torch.Generator) -> None:
    q = randn(2, 8, 4, 16, gen=gen, dtype=dtype)
    k = randn(2, 2, 9, 16, gen=gen, dtype=dtype)
    v = randn(2, 2, 9, 16, gen=gen, dtype=dtype)
    bias = randn(2, 1, 4, 9, gen=gen, dtype=dtype)  # an ALiBi-like additive bias per batch
    bias[0, 0, :, 0] = float("-inf")  # a hard-masked key
    out = dense_attention(q, k, v, causal=causal, mask=bias)
    expected = ref_attention(np64(q), np64(k), np64(v), causal=causal, mask=np64(bias))
    assert rel_error(out, expected) <= TOL[dtype]


def test_float_padding_mask_broadcast_over_queries_with_causal(gen: torch.Generator) -> None:
    q, k, v = randn(2, 8, 5, 16, gen=gen), randn(2, 2, 9, 16, gen=gen), randn(2, 2, 9, 16, gen=gen)
    bias = torch.zeros(2, 1, 1, 9)
    bias[1, ..., :3] = float("-inf")
    out = dense_attention(q, k, v, causal=True, mask=bias)
    assert rel_error(out, ref_attention(np64(q), np64(k), np64(v), causal=True, mask=np64(bias))) <= TOL[torch.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_custom_softmax_scale(dtype: torch.dtype, causal: bool, gen: torch.Generator) -> None:
    q, k, v = randn(1, 8, 3, 32, gen=gen, dtype=dtype), randn(1, 2, 6, 32, gen=gen, dtype=dtype), \
        randn(1, 2, 6, 32, gen=gen, dtype=dtype)
    out = dense_attention(q, k, v, causal=causal, scale=0.37)
    assert rel_error(out, ref_attention(np64(q), np64(k), np64(v), causal=causal, scale=0.37)) <= TOL[dtype]
    default = dense_attention(q, k, v, causal=causal)
    assert not torch.allclose(out, default), "the scale argument was ignored"


# ---------------------------------------------------------------------------------------------
# paged attention
# ---------------------------------------------------------------------------------------------

def make_paged(seq_lens: list[int], block_size: int, q_len: int, gen: torch.Generator, dtype: torch.dtype,
               hq: int = 8, hkv: int = 2, d: int = 16, fill: float | None = None):
    """Dense per-sequence K/V scattered into a cache through a shuffled, non-contiguous block table.

    Returns (q, k_cache, v_cache, table, lens, dense) where dense[b] = (k, v) of sequence b with
    shape (1, hkv, len, d). Unused cache slots hold random garbage (or ``fill``).
    """
    per_seq = max(-(-n // block_size) for n in seq_lens)
    blocks = len(seq_lens) * per_seq + 3  # spare blocks that no sequence owns
    k_cache = randn(blocks, block_size, hkv, d, gen=gen, dtype=dtype) * 7
    v_cache = randn(blocks, block_size, hkv, d, gen=gen, dtype=dtype) * 7
    if fill is not None:
        k_cache.fill_(fill)
        v_cache.fill_(fill)
    ids = torch.randperm(blocks, generator=gen)
    table = torch.zeros(len(seq_lens), per_seq, dtype=torch.int32)
    dense = []
    cursor = 0
    for b, n in enumerate(seq_lens):
        k = randn(1, hkv, n, d, gen=gen, dtype=dtype)
        v = randn(1, hkv, n, d, gen=gen, dtype=dtype)
        for blk in range(per_seq):
            table[b, blk] = int(ids[cursor])
            cursor += 1
        for pos in range(n):
            block_id, offset = int(table[b, pos // block_size]), pos % block_size
            k_cache[block_id, offset] = k[0, :, pos]
            v_cache[block_id, offset] = v[0, :, pos]
        dense.append((k, v))
    q = randn(len(seq_lens), hq, q_len, d, gen=gen, dtype=dtype)
    return q, k_cache, v_cache, table, torch.tensor(seq_lens, dtype=torch.int32), dense


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [4, 16])
@pytest.mark.parametrize(("q_len", "seq_lens"), [(1, [1, 5, 19]), (3, [3, 5, 19]), (3, [4, 16, 17])])
def test_paged_attention_matches_dense_on_gathered_sequence(dtype: torch.dtype, block_size: int, q_len: int,
                                                            seq_lens: list[int], gen: torch.Generator) -> None:
    q, k_cache, v_cache, table, lens, dense = make_paged(seq_lens, block_size, q_len, gen, dtype)
    assert not bool((table[:, 1:] == table[:, :-1] + 1).all()), "the block table should not be contiguous"
    out = GenericAttention().paged_attention(q, k_cache, v_cache, table, lens)
    assert out.shape == q.shape and out.dtype == dtype
    for b, (k, v) in enumerate(dense):
        expected = ref_attention(np64(q[b:b + 1]), np64(k), np64(v), causal=True)
        assert rel_error(out[b:b + 1], expected) <= TOL[dtype], f"sequence {b} (length {seq_lens[b]})"
        # and the dense generic op on the same gathered sequence agrees
        dense_out = dense_attention(q[b:b + 1], k, v, causal=True)
        torch.testing.assert_close(out[b:b + 1].float(), dense_out.float(), rtol=TOL[dtype], atol=TOL[dtype] * 4)


def test_paged_attention_with_custom_scale(gen: torch.Generator) -> None:
    q, k_cache, v_cache, table, lens, dense = make_paged([2, 9], 4, 1, gen, torch.float32)
    out = GenericAttention().paged_attention(q, k_cache, v_cache, table, lens, scale=0.11)
    for b, (k, v) in enumerate(dense):
        assert rel_error(out[b:b + 1], ref_attention(np64(q[b:b + 1]), np64(k), np64(v), causal=True,
                                                     scale=0.11)) <= TOL[torch.float32]


def test_paged_attention_matches_doctor_reference(gen: torch.Generator) -> None:
    """Cross-check with the doctor's numpy reference on the same cache."""
    from mistralrs_torch.testing import references as doctor_ref

    q, k_cache, v_cache, table, lens, _ = make_paged([1, 5, 19], 4, 1, gen, torch.float64)
    out = GenericAttention().paged_attention(q, k_cache, v_cache, table, lens)
    expected = doctor_ref.paged_attention_reference(np64(q), np64(k_cache), np64(v_cache), table.numpy(), lens.numpy())
    assert rel_error(out, expected) <= 1e-10


@pytest.mark.parametrize("garbage", [float("nan"), float("inf")])
def test_paged_attention_ignores_cache_slots_beyond_sequence_length(garbage: float, gen: torch.Generator) -> None:
    """Slots past seq_len (the tail of the last block, blocks a sequence does not own) are not part of
    the sequence: a cache allocated with torch.empty may hold anything there, NaN included, and
    flash-attn's KV-cache kernel never reads them. The result must not depend on them."""
    q, k_cache, v_cache, table, lens, dense = make_paged([1, 5, 19], 4, 1, gen, torch.float32, fill=garbage)
    out = GenericAttention().paged_attention(q, k_cache, v_cache, table, lens)
    for b, (k, v) in enumerate(dense):
        assert rel_error(out[b:b + 1], ref_attention(np64(q[b:b + 1]), np64(k), np64(v), causal=True)) \
            <= TOL[torch.float32], f"sequence {b} read slots past its length {int(lens[b])}"


def test_the_paged_gather_plan_by_hand() -> None:
    # 3 blocks of size 2; sequence 0 (3 tokens) in blocks 2, 0; sequence 1 (4 tokens) in blocks 1, 2.
    table = torch.tensor([[2, 0], [1, 2]], dtype=torch.int32)
    index, allowed = paged_gather_plan(table, torch.tensor([3, 4], dtype=torch.int32), 2, 1)
    # Flat slot = block * 2 + offset; sequence 0's padding position reads its own first slot (4), masked out.
    assert index.tolist() == [[4, 5, 0, 4], [2, 3, 4, 5]]
    assert allowed is not None and allowed[:, 0, 0].tolist() == [[True, True, True, False], [True] * 4]
    (one,) = paged_gather_plan(table[:1], torch.tensor([4], dtype=torch.int32), 2, 1)[1:]
    assert one is None  # batch-1 decode sees every key: no mask at all
    causal = paged_gather_plan(table[1:], torch.tensor([4], dtype=torch.int32), 2, 2)[1]
    assert causal is not None and causal[0, 0].tolist() == [[True, True, True, False], [True] * 4]


# ---------------------------------------------------------------------------------------------
# matmul
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear(dtype: torch.dtype, with_bias: bool, gen: torch.Generator) -> None:
    x = randn(2, 3, 24, gen=gen, dtype=dtype)
    w = randn(10, 24, gen=gen, dtype=dtype) / 4
    b = randn(10, gen=gen, dtype=dtype) if with_bias else None
    out = GenericMatmul().linear(x, w, b)
    assert out.shape == (2, 3, 10) and out.dtype == dtype
    assert rel_error(out, ref_linear(np64(x), np64(w), None if b is None else np64(b))) <= TOL[dtype]


def test_linear_by_hand() -> None:
    x = torch.tensor([[1.0, 2.0]])
    w = torch.tensor([[3.0, 4.0], [-1.0, 0.5]])
    assert GenericMatmul().linear(x, w).tolist() == [[11.0, 0.0]]
    assert GenericMatmul().linear(x, w, torch.tensor([1.0, -2.0])).tolist() == [[12.0, -2.0]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_int8_linear_per_channel_scales(dtype: torch.dtype, with_bias: bool, gen: torch.Generator) -> None:
    x = randn(5, 32, gen=gen, dtype=dtype)
    w = torch.randint(-128, 128, (12, 32), generator=gen, dtype=torch.int8)
    scale = (torch.rand(12, generator=gen) * 0.02 + 0.001)  # float32 scales, one per output channel
    b = randn(12, gen=gen, dtype=dtype) if with_bias else None
    out = GenericMatmul().int8_linear(x, w, scale, b)
    assert out.shape == (5, 12) and out.dtype == dtype
    reference = ref_int8_linear(np64(x), w.numpy(), np64(scale), None if b is None else np64(b))
    assert rel_error(out, reference) <= TOL[dtype]


def test_int8_scale_is_per_output_channel_by_hand() -> None:
    w = torch.tensor([[1, 2], [-3, 127]], dtype=torch.int8)
    scale = torch.tensor([0.5, 2.0])
    assert dequantize_int8(w, scale, torch.float32).tolist() == [[0.5, 1.0], [-6.0, 254.0]]
    x = torch.tensor([[1.0, 1.0]])
    assert GenericMatmul().int8_linear(x, w, scale).tolist() == [[1.5, 248.0]]


def test_dequantize_int8_extremes_are_exact() -> None:
    w = torch.tensor([[-128, 127, 0]], dtype=torch.int8)
    assert dequantize_int8(w, torch.tensor([1.0]), torch.bfloat16).tolist() == [[-128.0, 127.0, 0.0]]


# ---------------------------------------------------------------------------------------------
# supports()
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [GenericAttention(), GenericMatmul()], ids=["attention", "matmul"])
def test_supports_refuses_other_devices_and_int_dtypes_with_a_reason(backend) -> None:
    op = "attention" if isinstance(backend, GenericAttention) else "linear"
    assert backend.supports(CallSpec(op, "float32", "cpu", 64)).ok
    assert backend.supports(CallSpec(op, "bfloat16", "cpu", 128)).ok
    on_gpu = backend.supports(CallSpec(op, "float32", "cuda", 64))
    assert not on_gpu.ok and "cuda" in on_gpu.reason
    on_mps = backend.supports(CallSpec(op, "float32", "mps", 64))
    assert not on_mps.ok and "mps" in on_mps.reason
    integer = backend.supports(CallSpec(op, "int32", "cpu", 64))
    assert not integer.ok and "int32" in integer.reason and "float32" in integer.reason


def test_generic_backends_satisfy_the_protocols_at_lowest_priority() -> None:
    attention, matmul, collectives = GenericAttention(), GenericMatmul(), SingleProcessCollectives()
    assert isinstance(attention, AttentionBackend)
    assert isinstance(matmul, MatmulBackend)
    assert isinstance(collectives, CollectiveBackend)
    assert {attention.feature, matmul.feature, collectives.feature} == {"cpu"}
    assert attention.dispatch_priority == matmul.dispatch_priority == collectives.dispatch_priority < 0


# ---------------------------------------------------------------------------------------------
# the single-process communicator
# ---------------------------------------------------------------------------------------------


def test_single_process_communicator_semantics() -> None:
    comm = SingleProcessCollectives().communicator({})
    assert isinstance(comm, SingleProcessCommunicator) and isinstance(comm, Communicator)
    assert (comm.rank, comm.world_size) == (0, 1)
    t = torch.tensor([1.0, -2.0, 3.5])
    for op in ("sum", "max"):
        torch.testing.assert_close(comm.all_reduce(t.clone(), op), t)
    torch.testing.assert_close(comm.all_reduce(t.clone()), t)
    bf = t.bfloat16()
    assert comm.all_reduce(bf.clone()).dtype == torch.bfloat16
    gathered = comm.all_gather(t)
    assert isinstance(gathered, list) and len(gathered) == 1
    torch.testing.assert_close(gathered[0], t)
    torch.testing.assert_close(comm.broadcast(t.clone(), src=0), t)
    assert comm.barrier() is None


@pytest.mark.parametrize("op", ["avg", "prod", "SUM", ""])
def test_single_process_all_reduce_rejects_unknown_ops(op: str) -> None:
    with pytest.raises(UnsupportedCallError) as caught:
        SingleProcessCommunicator().all_reduce(torch.ones(2), op)
    assert isinstance(caught.value, MistralrsError)
    assert repr(op) in str(caught.value) and "sum" in str(caught.value) and "max" in str(caught.value)


@pytest.mark.parametrize("src", [1, -1, 7])
def test_single_process_broadcast_rejects_other_sources(src: int) -> None:
    with pytest.raises(UnsupportedCallError, match=f"src={src}"):
        SingleProcessCommunicator().broadcast(torch.ones(2), src=src)


# ---------------------------------------------------------------------------------------------
# safetensors loading
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def weights(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    from safetensors.torch import save_file

    tensors = {
        "w": torch.arange(6 * 8, dtype=torch.float32).reshape(6, 8),
        "b": torch.arange(6, dtype=torch.bfloat16),
        "q": torch.arange(-12, 12, dtype=torch.int8).reshape(4, 6),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    return path, tensors


def test_load_safetensors_whole_file(weights) -> None:
    path, tensors = weights
    loaded = load_safetensors(path)
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].device.type == "cpu"
        assert torch.equal(loaded[name], tensor)


def test_load_safetensors_selected_names(weights) -> None:
    path, tensors = weights
    loaded = load_safetensors(path, names=["b"])
    assert list(loaded) == ["b"] and torch.equal(loaded["b"], tensors["b"])


@pytest.mark.parametrize(
    ("part", "index"),
    [
        (TensorSlice(0, 2, 5), (slice(2, 5),)),
        (TensorSlice(1, 4, 8), (slice(None), slice(4, 8))),
        (TensorSlice(1, 0, 1), (slice(None), slice(0, 1))),
    ],
)
def test_load_safetensors_reads_only_a_slice(weights, part: TensorSlice, index: tuple) -> None:
    path, tensors = weights
    loaded = load_safetensors(path, slices={"w": part, "q": TensorSlice(0, 1, 3)})
    expected = tensors["w"][index]
    assert loaded["w"].shape == expected.shape
    assert torch.equal(loaded["w"], expected)
    assert torch.equal(loaded["q"], tensors["q"][1:3]) and loaded["q"].dtype == torch.int8
    assert torch.equal(loaded["b"], tensors["b"])  # a tensor without a slice loads whole


def test_load_safetensors_negative_dim_slices_that_dimension(weights) -> None:
    """TensorSlice(dim=-1, ...) must slice the last dimension (or be refused), never another one."""
    path, tensors = weights
    try:
        loaded = load_safetensors(path, names=["w"], slices={"w": TensorSlice(-1, 0, 2)})
    except (MistralrsError, ValueError, IndexError):
        return
    assert loaded["w"].shape == (6, 2), f"dim=-1 sliced the wrong dimension: got shape {tuple(loaded['w'].shape)}"
    assert torch.equal(loaded["w"], tensors["w"][:, 0:2])


def test_runtime_loads_through_the_same_loader(weights) -> None:
    from mistralrs_torch.runtime import Runtime

    path, tensors = weights
    runtime = Runtime.create(environ={"MISTRALRS_FEATURES": "none", "MISTRALRS_PLUGIN_AUTOLOAD": "0"})
    loaded = runtime.load_safetensors(path, names=["w"], slices={"w": TensorSlice(0, 0, 3)})
    assert torch.equal(loaded["w"], tensors["w"][:3])
    moved = runtime.to_device(torch.ones(2))
    assert moved.device.type == "cpu"


@pytest.mark.parametrize(
    "kwargs", [{"names": ["w", "missing_weight"]}, {"slices": {"missing_weight": TensorSlice(0, 0, 1)}}]
)
def test_load_safetensors_missing_tensor_is_a_config_error_naming_it(weights, kwargs) -> None:
    path, _ = weights
    with pytest.raises(ConfigError) as caught:
        load_safetensors(path, **kwargs)
    message = str(caught.value)
    assert "missing_weight" in message and str(path) in message
    assert "w" in message  # says what the file does hold
