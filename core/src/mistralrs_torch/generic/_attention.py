"""Reference attention on the CPU with plain torch: SDPA for dense, a gather for paged."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mistralrs_torch.generic._base import TORCH_DTYPES, TorchBackend

__all__ = ["GenericAttention", "TorchAttention", "bottom_right_causal_mask", "dense_attention",
           "gather_paged_kv", "paged_attention", "write_kv_cache"]


def bottom_right_causal_mask(q_len: int, k_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(q_len, k_len) bool mask, True where allowed: query i sees keys up to k_len - q_len + i (flash-attn's alignment)."""
    rows = torch.arange(q_len, device=device)[:, None]
    cols = torch.arange(k_len, device=device)[None, :]
    return cols <= rows + (k_len - q_len)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v over (batch, heads, seq, head size), grouped-query heads allowed."""
    q_len, k_len = q.shape[-2], k.shape[-2]
    if causal and (mask is not None or q_len != k_len):
        # SDPA's is_causal aligns top-left; the op contract aligns bottom-right.
        allowed = bottom_right_causal_mask(q_len, k_len, q.device)
        if mask is None:
            mask = allowed
        elif mask.dtype == torch.bool:
            mask = mask & allowed
        else:
            mask = mask.masked_fill(~allowed, float("-inf"))
        causal = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                          scale=scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]),
                                          enable_gqa=k.shape[1] != q.shape[1])


def gather_paged_kv(cache: torch.Tensor, block_table: torch.Tensor) -> torch.Tensor:
    """(blocks, block size, kv heads, D) cache + (batch, max blocks) table -> (batch, kv heads, max blocks * block size, D)."""
    batch, max_blocks = block_table.shape
    gathered = cache[block_table.clamp(min=0).long()]  # (batch, max blocks, block size, kv heads, D)
    return gathered.reshape(batch, max_blocks * cache.shape[1], cache.shape[2], cache.shape[3]).transpose(1, 2)


def write_kv_cache(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor) -> None:
    """k_cache[s // block size, s % block size] = k[t] for each token t with slot s = slot_mapping[t] >= 0."""
    slots = slot_mapping.long()
    keep = slots >= 0
    if not bool(keep.all()):
        slots, k, v = slots[keep], k[keep], v[keep]
    # A contiguous cache viewed as (slots, kv heads, head size): one index_put per cache, in place.
    k_cache.view(-1, *k_cache.shape[2:])[slots] = k
    v_cache.view(-1, *v_cache.shape[2:])[slots] = v


class TorchAttention(TorchBackend):
    """Attention in plain torch on one device type: SDPA for dense, a gather for paged.

    The generic CPU backend is one instance; device plugins (metal, cuda) make
    their own with their device type, dtypes and priority.
    """

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                  mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
        return dense_attention(q, k, v, causal=causal, mask=mask, scale=scale)

    def paged_attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                        seq_lens: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
        return paged_attention(q, k_cache, v_cache, block_table, seq_lens, scale=scale)

    write_kv_cache = staticmethod(write_kv_cache)


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                    seq_lens: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
    """q (batch, heads, q len, D) against a paged cache, bottom-right causal within each sequence's length."""
    k = gather_paged_kv(k_cache, block_table)
    v = gather_paged_kv(v_cache, block_table)
    q_len, k_len = q.shape[-2], k.shape[-2]
    positions = torch.arange(k_len, device=q.device)
    lens = seq_lens.to(device=q.device, dtype=torch.long)[:, None, None]  # (batch, 1, 1)
    rows = torch.arange(q_len, device=q.device)[None, :, None]
    # Key j is valid below the sequence's length and, causally, up to len - q_len + row.
    valid = positions[None, None, :] < lens
    allowed = valid & (positions[None, None, :] <= lens - q_len + rows)
    # Slots past a sequence's end hold whatever the allocator left there (even NaN); a masked
    # score times a NaN value is still NaN, so those slots are zeroed, not just masked.
    k, v = (torch.where(valid[:, :, :, None], t, 0) for t in (k, v))
    return dense_attention(q, k, v, mask=allowed[:, None, :, :], scale=scale)


class GenericAttention(TorchAttention):
    """The generic CPU attention backend: correct for every layout the contract allows, not fast."""

    def __init__(self) -> None:
        super().__init__("cpu-attention", "cpu", -1000, "cpu", TORCH_DTYPES)
