"""Layers shared by the model classes: linear (dense or quantized), RMSNorm, embedding, paged-cache attention.

Every computation that has an op goes through the runtime (linear, quantized
linear, RMSNorm, rotary embedding, attention, paged attention, cache writes),
so the model never names a backend; what remains here is indexing, reshaping
and elementwise glue.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mistralrs_torch.models._batch import StepInputs
from mistralrs_torch.ops import QuantizedWeight
from mistralrs_torch.runtime import Runtime

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


@dataclass
class Attention:
    """Grouped-query self-attention with RoPE: dense causal attention over prompts, paged attention per new token."""

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

    def __call__(self, x: torch.Tensor, step: StepInputs) -> torch.Tensor:
        """x (tokens, hidden) packed as ``step`` lays them out: prompts first, then one token per decoding sequence."""
        rt, tokens, heads, size = self.runtime, x.shape[0], self.heads, self.head_dim
        q = self.q_proj(x).view(1, tokens, heads, size).transpose(1, 2)
        k = self.k_proj(x).view(1, tokens, self.kv_heads, size).transpose(1, 2)
        v = self.v_proj(x).view(1, tokens, self.kv_heads, size).transpose(1, 2)
        q, k = rt.rotary_embedding(q, k, step.positions, self.inv_freq)
        span = step.spans[self.window]
        k_cache, v_cache = step.cache.keys[self.layer], step.cache.values[self.layer]
        rt.write_kv_cache(k[0].transpose(0, 1), v[0].transpose(0, 1), k_cache, v_cache, span.slots)
        outs = []
        if step.prompts:
            n = step.prompt_tokens
            q_, k_, v_ = (self._padded(t[0, :, :n].transpose(0, 1), step) for t in (q, k, v))
            out = rt.attention(q_, k_, v_, causal=True, mask=span.mask).transpose(1, 2).reshape(-1, heads * size)
            outs.append(out if step.unpad is None else out[step.unpad])
        if step.decodes:
            q_ = q[0, :, step.prompt_tokens:].transpose(0, 1)[:, :, None]  # (decodes, heads, 1, head size)
            assert span.table is not None and span.lens is not None
            outs.append(rt.paged_attention(q_, k_cache, v_cache, span.table, span.lens).reshape(-1, heads * size))
        return self.o_proj(outs[0] if len(outs) == 1 else torch.cat(outs))

    @staticmethod
    def _padded(packed: torch.Tensor, step: StepInputs) -> torch.Tensor:
        """(prompt tokens, heads, head size) -> (prompts, heads, longest prompt, head size)."""
        rows = packed if step.pad is None else packed[step.pad]
        return rows.view(step.prompts, step.prompt_len, *packed.shape[1:]).transpose(1, 2)
