"""Independent float64 references in numpy, one per op of the registry (named ``<op>_reference``).

numpy rather than torch, so a bug in torch's kernels cannot hide in both sides of a comparison.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

#: Any numpy array (spelled out: numpy before 2.3, which Python 3.10 gets, has no default type arguments).
Array = NDArray[Any]


def attention_reference(q: Array, k: Array, v: Array, *, causal: bool = False,
                        mask: Array | None = None, scale: float | None = None) -> Array:
    """Dense attention in float64: (B, Hq, Lq, D) x (B, Hkv, Lk, D), bottom-right causal, GQA by head groups."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    groups = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, groups, axis=1), np.repeat(v, groups, axis=1)
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    scores = np.einsum("bhqd,bhkd->bhqk", q, k) * scale
    q_len, k_len = q.shape[-2], k.shape[-2]
    if mask is not None:
        mask = np.asarray(mask)
        scores = np.where(mask, scores, -np.inf) if mask.dtype == bool else scores + mask.astype(np.float64)
    if causal:
        allowed = np.arange(k_len)[None, :] <= np.arange(q_len)[:, None] + (k_len - q_len)
        scores = np.where(allowed, scores, -np.inf)
    scores -= scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    return np.asarray(np.einsum("bhqk,bhkd->bhqd", weights, v), np.float64)


def paged_attention_reference(q: Array, k_cache: Array, v_cache: Array, block_table: Array,
                              seq_lens: Array, *, scale: float | None = None) -> Array:
    """Paged decode attention in float64, one sequence at a time from its listed blocks."""
    block_size = k_cache.shape[1]
    out = np.zeros(q.shape, dtype=np.float64)
    for b, length in enumerate(np.asarray(seq_lens)):
        blocks = np.asarray(block_table)[b, : -(-int(length) // block_size)]
        k = np.concatenate([k_cache[i] for i in blocks])[:length].transpose(1, 0, 2)[None]
        v = np.concatenate([v_cache[i] for i in blocks])[:length].transpose(1, 0, 2)[None]
        out[b] = attention_reference(q[b : b + 1], k, v, causal=True, scale=scale)[0]
    return out


def linear_reference(x: Array, weight: Array, bias: Array | None = None) -> Array:
    """x @ weight.T + bias in float64."""
    out = np.asarray(x, np.float64) @ np.asarray(weight, np.float64).T
    return np.asarray(out if bias is None else out + np.asarray(bias, np.float64), np.float64)


def int8_linear_reference(x: Array, weight: Array, scale: Array,
                          bias: Array | None = None) -> Array:
    """Weight-only int8 linear in float64: weight (out, in) int8 times a scale per output channel."""
    return linear_reference(x, np.asarray(weight, np.float64) * np.asarray(scale, np.float64)[:, None], bias)


def write_kv_cache_reference(k: Array, v: Array, k_cache: Array, v_cache: Array,
                             slot_mapping: Array) -> tuple[Array, Array]:
    """The caches after writing token t at flat slot slot_mapping[t] (skipping -1), one token at a time."""
    k_out, v_out = np.array(k_cache, dtype=np.float64), np.array(v_cache, dtype=np.float64)
    block_size = k_out.shape[1]
    for token, slot in enumerate(np.asarray(slot_mapping).tolist()):
        if slot >= 0:
            k_out[slot // block_size, slot % block_size] = k[token]
            v_out[slot // block_size, slot % block_size] = v[token]
    return k_out, v_out


def rotary_embedding_reference(q: Array, k: Array, positions: Array,
                               inv_freq: Array) -> tuple[Array, Array]:
    """Rotate-half rotary embedding; the angles are float32 products as the contract computes them."""
    angles = (np.asarray(positions).astype(np.float32)[..., None] * np.asarray(inv_freq, np.float32)).astype(np.float64)
    cos = np.cos(np.concatenate([angles, angles], axis=-1))[:, None]  # (batch, 1, seq, head)
    sin = np.sin(np.concatenate([angles, angles], axis=-1))[:, None]

    def rotate(x: Array) -> Array:
        x = np.asarray(x, np.float64)
        half = x.shape[-1] // 2
        return np.asarray(x * cos + np.concatenate([-x[..., half:], x[..., :half]], axis=-1) * sin, np.float64)

    return rotate(q), rotate(k)


def rms_norm_reference(x: Array, weight: Array, eps: float) -> Array:
    """x / sqrt(mean(x ** 2) + eps) * weight in float64."""
    x = np.asarray(x, np.float64)
    normed = x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    return np.asarray(normed * np.asarray(weight, np.float64), np.float64)


def dequantize_reference(codes: Array, scales: Array, offsets: Array | None, bits: int,
                         group_size: int) -> Array:
    """The float64 weight (out, in) of a group-wise quantized weight."""
    codes = np.asarray(codes, np.float64)
    scales = np.repeat(np.asarray(scales, np.float64), group_size, axis=1)
    if offsets is None:
        return np.asarray(scales * (codes - 2 ** (bits - 1)), np.float64)
    return np.asarray(scales * codes + np.repeat(np.asarray(offsets, np.float64), group_size, axis=1), np.float64)


def quantized_linear_reference(x: Array, weight: Any, bias: Array | None = None) -> Array:
    """x @ dequantize(weight).T + bias; ``weight`` holds numpy codes, scales, offsets, bits and group_size."""
    dense = dequantize_reference(weight.codes, weight.scales, weight.offsets, weight.bits, weight.group_size)
    return linear_reference(x, dense, bias)
