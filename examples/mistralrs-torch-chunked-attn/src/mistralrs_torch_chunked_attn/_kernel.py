"""Chunked attention with an online softmax: keys are visited chunk by chunk, never all at once."""

from __future__ import annotations

import math
import os

import torch

from mistralrs_torch import CallSpec, ConfigError, Support

__all__ = ["ChunkedAttention", "chunked_attention"]

_DTYPES = ("float32", "float64", "bfloat16", "float16")


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                      mask: torch.Tensor | None = None, scale: float | None = None, chunk: int = 1024) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v over (batch, heads, seq, head size), bottom-right causal, grouped-query heads."""
    batch, heads, q_len, head = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    groups = heads // kv_heads
    # Half precision accumulates in fp32; fp64 stays fp64.
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = 1.0 / math.sqrt(head) if scale is None else scale
    # Group the query heads that share a KV head: rows are (group, query position).
    rows = q.to(work).reshape(batch, kv_heads, groups * q_len, head)
    acc = torch.zeros_like(rows)
    running_max = torch.full(rows.shape[:-1], float("-inf"), dtype=work)
    total = torch.zeros(rows.shape[:-1], dtype=work)
    query_pos = torch.arange(q_len).repeat(groups)  # each row's query position
    for start in range(0, k_len, chunk):
        stop = min(start + chunk, k_len)
        scores = rows @ k[:, :, start:stop].to(work).transpose(-1, -2) * scale
        if mask is not None:
            part = mask[..., start:stop].expand(batch, heads, q_len, stop - start)
            part = part.reshape(batch, kv_heads, groups * q_len, stop - start)
            scores = scores.masked_fill(~part, float("-inf")) if part.dtype == torch.bool else scores + part.to(work)
        if causal:
            key_pos = torch.arange(start, stop)
            scores = scores.masked_fill(key_pos[None, :] > query_pos[:, None] + (k_len - q_len), float("-inf"))
        new_max = torch.maximum(running_max, scores.amax(dim=-1))
        # A row with nothing visible yet keeps -inf; subtracting 0 instead avoids inf - inf.
        shift = torch.where(torch.isinf(new_max), torch.zeros_like(new_max), new_max)
        weights = torch.exp(scores - shift[..., None])
        correction = torch.exp(running_max - shift)
        total = total * correction + weights.sum(dim=-1)
        acc = acc * correction[..., None] + weights @ v[:, :, start:stop].to(work)
        running_max = new_max
    out = acc / total[..., None]
    return out.reshape(batch, heads, q_len, head).to(q.dtype)


class ChunkedAttention:
    """The chunked-attn backend: dense attention only (paged attention stays with the next backend)."""

    name = "chunked-attention"
    feature = "chunked-attn"
    dispatch_priority = 10
    paged_attention = None

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        raw = (os.environ if environ is None else environ).get("MISTRALRS_CHUNKED_ATTN_CHUNK", "1024")
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError(f"MISTRALRS_CHUNKED_ATTN_CHUNK={raw!r} must be a positive whole number of keys, "
                              "e.g. 1024: fix it or unset it")
        self.chunk = int(raw)

    def supports(self, call: CallSpec) -> Support:
        if call.device != "cpu":
            return Support(False, f"runs on the CPU only, not {call.device}")
        if call.dtype not in _DTYPES:
            return Support(False, f"dtype {call.dtype} is not one of {', '.join(_DTYPES)}")
        return Support(True)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                  mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
        return chunked_attention(q, k, v, causal=causal, mask=mask, scale=scale, chunk=self.chunk)
