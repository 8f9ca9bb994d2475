"""Independent float64 references in numpy, and the tiny cases doctor verifies each backend on.

numpy rather than torch, so a bug in torch's kernels cannot hide in both sides of a comparison.
"""

from __future__ import annotations

import numpy as np

__all__ = ["attention_reference", "int8_linear_reference", "linear_reference", "paged_attention_reference"]


def attention_reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, *, causal: bool = False,
                        mask: np.ndarray | None = None, scale: float | None = None) -> np.ndarray:
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
    return np.einsum("bhqk,bhkd->bhqd", weights, v)


def paged_attention_reference(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, block_table: np.ndarray,
                              seq_lens: np.ndarray, *, scale: float | None = None) -> np.ndarray:
    """Paged decode attention in float64, one sequence at a time from its listed blocks."""
    block_size = k_cache.shape[1]
    out = np.zeros(q.shape, dtype=np.float64)
    for b, length in enumerate(np.asarray(seq_lens)):
        blocks = np.asarray(block_table)[b, : -(-int(length) // block_size)]
        k = np.concatenate([k_cache[i] for i in blocks])[:length].transpose(1, 0, 2)[None]
        v = np.concatenate([v_cache[i] for i in blocks])[:length].transpose(1, 0, 2)[None]
        out[b] = attention_reference(q[b : b + 1], k, v, causal=True, scale=scale)[0]
    return out


def linear_reference(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """x @ weight.T + bias in float64."""
    out = np.asarray(x, np.float64) @ np.asarray(weight, np.float64).T
    return out if bias is None else out + np.asarray(bias, np.float64)


def int8_linear_reference(x: np.ndarray, weight: np.ndarray, scale: np.ndarray,
                          bias: np.ndarray | None = None) -> np.ndarray:
    """Weight-only int8 linear in float64: weight (out, in) int8 times a scale per output channel."""
    return linear_reference(x, np.asarray(weight, np.float64) * np.asarray(scale, np.float64)[:, None], bias)
