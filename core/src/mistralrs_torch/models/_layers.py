"""Layers shared by the model classes: linear (dense or quantized), RMSNorm, embedding, paged-cache attention.

Every computation that has an op goes through the runtime (linear, quantized
linear, RMSNorm, rotary embedding, attention, paged attention, cache writes),
so the model never names a backend; what remains here is indexing, reshaping
and elementwise glue.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mistralrs_torch.ops import QuantizedWeight
from mistralrs_torch.runtime import Runtime

__all__ = ["Attention", "Embedding", "KVCache", "Linear", "RMSNorm", "Weight"]

#: A weight as a loader hands it over: a dense tensor, or group-wise quantized codes.
Weight = torch.Tensor | QuantizedWeight


def _on_device(runtime: Runtime, weight: QuantizedWeight) -> QuantizedWeight:
    offsets = None if weight.offsets is None else runtime.to_device(weight.offsets)
    return QuantizedWeight(runtime.to_device(weight.codes), runtime.to_device(weight.scales), offsets, weight.bits,
                           weight.group_size)


class Linear:
    """x @ W.T + b; a quantized W is prepared once here, in the layout its backend wants, and stays quantized."""

    def __init__(self, runtime: Runtime, weight: Weight, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        self.out_features = weight.shape[0]
        self.bias = None if bias is None else runtime.to_device(bias).to(dtype)
        if isinstance(weight, QuantizedWeight):
            self._weight: object = runtime.prepare_quantized(_on_device(runtime, weight), dtype)
            self._call = runtime.quantized_linear
        else:
            self._weight = runtime.to_device(weight).to(dtype)
            self._call = runtime.linear

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._call(x, self._weight, self.bias)


class RMSNorm:
    def __init__(self, runtime: Runtime, weight: torch.Tensor, eps: float, dtype: torch.dtype) -> None:
        self.runtime, self.weight, self.eps = runtime, runtime.to_device(weight).to(dtype), eps

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.runtime.rms_norm(x, self.weight, self.eps)


class Embedding:
    """Rows of the token embedding; a quantized table dequantizes only the rows looked up."""

    def __init__(self, runtime: Runtime, weight: Weight, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.table: Weight = (_on_device(runtime, weight) if isinstance(weight, QuantizedWeight)
                              else runtime.to_device(weight).to(dtype))

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        table = self.table
        if isinstance(table, QuantizedWeight):
            rows = QuantizedWeight(table.codes[ids], table.scales[ids],
                                   None if table.offsets is None else table.offsets[ids], table.bits, table.group_size)
            return rows.dequantize(self.dtype)
        return table[ids]


class KVCache:
    """One sequence's paged KV cache: per layer, caches (blocks, block size, kv heads, head size) and a block table.

    A layer with a sliding window of W tokens keeps a ring of W slots (position
    p in slot p mod W): decode then attends over exactly the last W keys, whose
    order does not matter once RoPE is applied. Blocks are handed out in order;
    an allocator shared by many sequences is the KV cache manager's job.
    """

    def __init__(self, runtime: Runtime, windows: tuple[int | None, ...], capacity: int, kv_heads: int,
                 head_dim: int, dtype: torch.dtype, block_size: int = 16) -> None:
        self.length = 0
        self.block_size = block_size
        self.spans = [capacity if w is None else min(w, capacity) for w in windows]
        device = runtime.device.torch_device
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.tables: dict[int, torch.Tensor] = {}
        for span in self.spans:
            blocks = -(-span // block_size)
            shape = (blocks, block_size, kv_heads, head_dim)
            self.k.append(torch.zeros(shape, dtype=dtype, device=device))
            self.v.append(torch.zeros(shape, dtype=dtype, device=device))
            self.tables.setdefault(span, torch.arange(blocks, dtype=torch.int32, device=device)[None])
        self.device = device

    def slots(self, layer: int, start: int, count: int) -> torch.Tensor:
        """Slot of each of positions start .. start + count - 1 in ``layer``'s cache; -1 for ones out of the ring."""
        span = self.spans[layer]
        positions = torch.arange(start, start + count, device=self.device)
        keep = positions >= start + count - span  # of a prompt longer than the window, the last W tokens stay
        return torch.where(keep, positions % span, -1)

    def visible(self, layer: int, length: int) -> torch.Tensor:
        """seq_lens for a decode step of a sequence now ``length`` long: the whole ring once it has wrapped."""
        return torch.tensor([min(length, self.spans[layer])], dtype=torch.int32, device=self.device)


@dataclass
class Attention:
    """Grouped-query self-attention with RoPE: dense causal attention over a prompt, paged attention per new token."""

    runtime: Runtime
    layer: int
    q_proj: Linear
    k_proj: Linear
    v_proj: Linear
    o_proj: Linear
    heads: int
    kv_heads: int
    head_dim: int
    inv_freq: torch.Tensor
    window: int | None

    def __call__(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """x (tokens, hidden) at ``positions`` (1, tokens) int64; fills and reads ``cache`` (its length before)."""
        rt, tokens = self.runtime, x.shape[0]
        q = self.q_proj(x).view(1, tokens, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(1, tokens, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(1, tokens, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = rt.rotary_embedding(q, k, positions, self.inv_freq)
        k_cache, v_cache = cache.k[self.layer], cache.v[self.layer]
        rt.write_kv_cache(k[0].transpose(0, 1), v[0].transpose(0, 1), k_cache, v_cache,
                          cache.slots(self.layer, cache.length, tokens))
        if cache.length == 0:
            out = rt.attention(q, k, v, causal=True, mask=self._window_mask(tokens))
        elif tokens == 1:
            out = rt.paged_attention(q, k_cache, v_cache, cache.tables[cache.spans[self.layer]],
                                     cache.visible(self.layer, cache.length + 1))
        else:
            raise ValueError("a prompt continues a cached sequence only one token at a time (no chunked prefill yet)")
        return self.o_proj(out.transpose(1, 2).reshape(tokens, self.heads * self.head_dim))

    def _window_mask(self, tokens: int) -> torch.Tensor | None:
        """Within a window of W, query i sees keys i - W < j (causality is the op's); None when the prompt fits."""
        if self.window is None or tokens <= self.window:
            return None
        index = torch.arange(tokens, device=self.inv_freq.device)
        return (index[None, :] > index[:, None] - self.window)[None, None]
