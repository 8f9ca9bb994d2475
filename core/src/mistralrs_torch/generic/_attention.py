"""Attention in plain torch: SDPA for dense, a gather of each sequence's cached keys for paged."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mistralrs_torch.generic._base import TORCH_DTYPES, TorchBackend
from mistralrs_torch.ops import TensorMemo

_HALF = (torch.bfloat16, torch.float16)


def bottom_right_causal_mask(q_len: int, k_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(q_len, k_len) bool mask, True where allowed: query i sees keys up to k_len - q_len + i.

    This is flash-attn's bottom-right alignment.
    """
    rows = torch.arange(q_len, device=device)[:, None]
    cols = torch.arange(k_len, device=device)[None, :]
    return cols <= rows + (k_len - q_len)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v over (batch, heads, seq, head size), grouped-query heads allowed."""
    if q.dtype in _HALF and q.device.type == "cpu":
        # CPUs without native half arithmetic run torch's half SDPA 3-5x slower than upcasting (and less exactly).
        wide = mask if mask is None or mask.dtype == torch.bool else mask.float()
        return dense_attention(q.float(), k.float(), v.float(), causal=causal, mask=wide, scale=scale).to(q.dtype)
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


def paged_gather_plan(block_table: torch.Tensor, seq_lens: torch.Tensor, block_size: int,
                      q_len: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Where each sequence's keys are in the flattened cache, and which ones each query may see.

    Returns ``index`` (batch, keys) of flat slots and ``allowed`` (batch, 1, q_len, keys) bool, or None when
    every key is visible to every query (batch 1 decode). Positions past a sequence's length index that
    sequence's first slot (always written) and are masked, so no stale or NaN slot is ever read. On the CPU
    the key count is the longest sequence; elsewhere it is the table's width, which needs no device sync.
    """
    lens = seq_lens.to(torch.long)
    device = block_table.device
    keys = (int(lens.max()) if lens.numel() else 0) if device.type == "cpu" else block_table.shape[1] * block_size
    positions = torch.arange(keys, device=device)
    valid = positions[None, :] < lens[:, None]
    blocks = block_table.to(torch.long).gather(1, torch.where(valid, positions // block_size, 0))
    index = blocks * block_size + torch.where(valid, positions % block_size, 0)
    rows = torch.arange(q_len, device=device)[None, :, None]
    allowed = valid[:, None, :] & (positions[None, None, :] <= lens[:, None, None] - q_len + rows)
    everything = device.type == "cpu" and bool(allowed.all())
    return index, None if everything else allowed[:, None]


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
        return paged_attention(q, k_cache, v_cache, block_table, seq_lens, scale=scale, memo=self._plans)

    @property
    def _plans(self) -> TensorMemo:
        # Created on first use: subclasses keep their own constructors.
        memo = self.__dict__.get("_plan_memo")
        if memo is None:
            memo = self.__dict__["_plan_memo"] = TensorMemo()
        return memo

    write_kv_cache = staticmethod(write_kv_cache)


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                    seq_lens: torch.Tensor, *, scale: float | None = None,
                    memo: TensorMemo | None = None) -> torch.Tensor:
    """q (batch, heads, q len, D) against a paged cache, bottom-right causal within each sequence's length.

    ``memo`` keeps the gather plan of a block table and sequence lengths, which every layer of a step shares.
    """
    def plan() -> tuple[torch.Tensor, torch.Tensor | None]:
        return paged_gather_plan(block_table, seq_lens, k_cache.shape[1], q.shape[-2])

    index, allowed = plan() if memo is None else memo.get((block_table, seq_lens), (k_cache.shape[1], q.shape[-2]),
                                                          plan)
    batch, keys = index.shape
    flat = index.reshape(-1)
    k = k_cache.reshape(-1, *k_cache.shape[2:]).index_select(0, flat).view(batch, keys, *k_cache.shape[2:])
    v = v_cache.reshape(-1, *v_cache.shape[2:]).index_select(0, flat).view(batch, keys, *v_cache.shape[2:])
    return dense_attention(q, k.transpose(1, 2), v.transpose(1, 2), mask=allowed, scale=scale)


class GenericAttention(TorchAttention):
    """The generic CPU attention backend: correct for every layout the contract allows, not fast."""

    def __init__(self) -> None:
        super().__init__("cpu-attention", "cpu", -1000, "cpu", TORCH_DTYPES)
