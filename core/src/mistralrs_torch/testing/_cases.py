"""The op cases the conformance kit runs: shapes, layouts and masks the op contract allows.

Each case builds CPU float32 inputs from a seed; the kit casts them to the
dtype and device under test, asks the backend whether it supports the call,
and compares what it claims with the float64 numpy reference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mistralrs_torch.doctor import _reference as ref

__all__ = ["OpCase", "op_cases"]


@dataclass(frozen=True)
class OpCase:
    """One call: its op, a name for reports, CallSpec fields, and a builder of (args, kwargs)."""

    op: str
    name: str
    head_size: int
    mask: str
    extra: dict[str, Any]
    build: Callable[[torch.Generator], tuple[tuple[Any, ...], dict[str, Any]]] = field(compare=False)
    reference: Callable[..., np.ndarray] = field(compare=False)


def _dense(batch: int, heads: int, kv_heads: int, q_len: int, k_len: int, head: int, causal: bool,
           padding: bool) -> OpCase:
    def build(gen: torch.Generator) -> tuple[tuple[Any, ...], dict[str, Any]]:
        q = torch.randn(batch, heads, q_len, head, generator=gen)
        k = torch.randn(batch, kv_heads, k_len, head, generator=gen)
        v = torch.randn(batch, kv_heads, k_len, head, generator=gen)
        kwargs: dict[str, Any] = {"causal": causal}
        if padding:  # the first sequence's last two keys are padding
            mask = torch.ones(batch, 1, q_len, k_len, dtype=torch.bool)
            mask[0, :, :, -2:] = False
            kwargs["mask"] = mask
        return (q, k, v), kwargs

    kind = ("causal+bool" if padding else "causal") if causal else ("bool" if padding else "none")
    name = f"dense b{batch} h{heads}/{kv_heads} q{q_len} k{k_len} d{head} {kind}"
    return OpCase("attention", name, head, kind, {"gqa": heads != kv_heads, "aligned": q_len == k_len},
                  build, ref.attention_reference)


def _paged(block_size: int, lens: tuple[int, ...], q_len: int, heads: int, kv_heads: int, head: int) -> OpCase:
    def build(gen: torch.Generator) -> tuple[tuple[Any, ...], dict[str, Any]]:
        per_seq = -(-max(lens) // block_size)
        blocks = len(lens) * per_seq + 2
        k_cache = torch.randn(blocks, block_size, kv_heads, head, generator=gen)
        v_cache = torch.randn(blocks, block_size, kv_heads, head, generator=gen)
        table = torch.randperm(blocks, generator=gen)[: len(lens) * per_seq].to(torch.int32).reshape(len(lens), per_seq)
        q = torch.randn(len(lens), heads, q_len, head, generator=gen)
        return (q, k_cache, v_cache, table, torch.tensor(lens, dtype=torch.int32)), {}

    name = f"paged block{block_size} lens{list(lens)} q{q_len} h{heads}/{kv_heads} d{head}"
    return OpCase("paged_attention", name, head, "causal",
                  {"block_size": block_size, "gqa": heads != kv_heads}, build, ref.paged_attention_reference)


def _linear(rows: int, out_features: int, in_features: int, bias: bool) -> OpCase:
    def build(gen: torch.Generator) -> tuple[tuple[Any, ...], dict[str, Any]]:
        x, w = torch.randn(rows, in_features, generator=gen), torch.randn(out_features, in_features, generator=gen) / 4
        return (x, w, torch.randn(out_features, generator=gen) if bias else None), {}

    return OpCase("linear", f"linear {rows}x{in_features} -> {out_features}{' +bias' if bias else ''}", 0, "none", {},
                  build, ref.linear_reference)


def _int8(rows: int, out_features: int, in_features: int) -> OpCase:
    def build(gen: torch.Generator) -> tuple[tuple[Any, ...], dict[str, Any]]:
        x = torch.randn(rows, in_features, generator=gen)
        w = torch.randint(-127, 128, (out_features, in_features), generator=gen, dtype=torch.int8)
        scale = torch.rand(out_features, generator=gen) * 0.01 + 0.001
        return (x, w, scale, torch.randn(out_features, generator=gen)), {}

    return OpCase("int8_linear", f"int8 linear {rows}x{in_features} -> {out_features}", 0, "none",
                  {"in_features": in_features}, build, ref.int8_linear_reference)


def op_cases(op: str) -> Iterator[OpCase]:
    """Every case of one op, from the simplest up."""
    if op == "attention":
        for heads, kv_heads in ((4, 4), (8, 2)):
            for q_len, k_len in ((8, 8), (3, 9), (1, 17)):
                for head in (64, 128):
                    yield _dense(2, heads, kv_heads, q_len, k_len, head, causal=True, padding=False)
            yield _dense(2, heads, kv_heads, 8, 8, 64, causal=False, padding=False)
            yield _dense(2, heads, kv_heads, 5, 9, 64, causal=True, padding=True)
    elif op == "paged_attention":
        for block_size in (16, 256):
            for q_len in (1, 3):
                yield _paged(block_size, (5, block_size + 3, 3), q_len, 8, 2, 64)
                yield _paged(block_size, (block_size * 2,), q_len, 4, 4, 128)
    elif op == "linear":
        yield from (_linear(1, 24, 32, False), _linear(5, 40, 48, True), _linear(17, 8, 256, True))
    elif op == "int8_linear":
        yield from (_int8(1, 24, 32), _int8(5, 40, 48), _int8(3, 7, 33))
