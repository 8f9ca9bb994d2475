"""The cases every op is verified on: shapes, layouts and masks its contract allows.

A case builds its inputs from a seed directly in the dtype and on the device
under test (integer inputs, frequencies and quantized codes keep their own
dtypes); the verification engine hands the float64 reference copies of exactly
those inputs. ``smoke`` cases are the few doctor runs on every bound backend;
the kit runs them all. Each op's generator is named ``<op>_cases`` (the op
registry points at it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from mistralrs_torch.ops import CallSpec, QuantizedWeight

Built = tuple[tuple[Any, ...], dict[str, Any]]


@dataclass(frozen=True)
class OpCase:
    """One call of one op: a name for reports, its signature fields, and a builder of (args, kwargs)."""

    op: str
    name: str
    #: CallSpec fields beyond op, dtype and device.
    signature: dict[str, Any]
    build: Callable[[torch.Generator, torch.dtype, str], Built] = field(compare=False)
    smoke: bool = False

    def call(self, dtype: str, device: str) -> CallSpec:
        return CallSpec(self.op, dtype, device.split(":")[0], **self.signature)


def _randn(gen: torch.Generator, *shape: int, dtype: torch.dtype, device: str, scale: float = 1.0) -> torch.Tensor:
    # Drawn in float32 on the CPU from the seed, so every dtype and device sees the same values before rounding.
    return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)


# -- attention ------------------------------------------------------------------------------------------


def _dense(batch: int, heads: int, kv_heads: int, q_len: int, k_len: int, head: int, causal: bool, padding: bool,
           *, q_scale: float = 1.0, smoke: bool = False) -> OpCase:
    def build(gen: torch.Generator, dtype: torch.dtype, device: str) -> Built:
        q = _randn(gen, batch, heads, q_len, head, dtype=dtype, device=device, scale=q_scale)
        k = _randn(gen, batch, kv_heads, k_len, head, dtype=dtype, device=device)
        v = _randn(gen, batch, kv_heads, k_len, head, dtype=dtype, device=device)
        kwargs: dict[str, Any] = {"causal": causal}
        if padding:  # the first sequence's last two keys are padding
            mask = torch.ones(batch, 1, q_len, k_len, dtype=torch.bool)
            mask[0, :, :, -2:] = False
            kwargs["mask"] = mask.to(device)
        return (q, k, v), kwargs

    kind = ("causal+bool" if padding else "causal") if causal else ("bool" if padding else "none")
    name = f"dense b{batch} h{heads}/{kv_heads} q{q_len} k{k_len} d{head} {kind}"
    return OpCase("attention", name + (f" logits x{q_scale}" if q_scale != 1.0 else ""),
                  {"head_size": head, "mask": kind, "gqa": heads != kv_heads, "aligned": q_len == k_len},
                  build, smoke)


def attention_cases() -> Iterator[OpCase]:
    # Bottom-right causal with a shorter query first, then query and keys of one length, for kernels whose
    # causal mask is top-left and so refuse the first (torch's flash and cuDNN).
    yield _dense(2, 4, 2, 3, 7, 64, causal=True, padding=False, smoke=True)
    yield _dense(2, 4, 2, 5, 5, 64, causal=True, padding=False, smoke=True)
    for heads, kv_heads in ((4, 4), (8, 2)):
        for q_len, k_len in ((8, 8), (3, 9), (1, 17)):
            for head in (64, 128):
                yield _dense(2, heads, kv_heads, q_len, k_len, head, causal=True, padding=False)
        yield _dense(2, heads, kv_heads, 8, 8, 64, causal=False, padding=False)
        yield _dense(2, heads, kv_heads, 5, 9, 64, causal=True, padding=True)
    # Logits spread enough that a 1% error in the softmax scale exceeds the bfloat16 tolerance.
    yield _dense(2, 8, 2, 5, 64, 128, causal=True, padding=False, q_scale=1.4, smoke=True)
    yield _dense(2, 8, 2, 64, 64, 128, causal=True, padding=False, q_scale=1.4)


def _paged(block_size: int, lens: tuple[int, ...], q_len: int, heads: int, kv_heads: int, head: int,
           smoke: bool = False) -> OpCase:
    def build(gen: torch.Generator, dtype: torch.dtype, device: str) -> Built:
        per_seq = -(-max(lens) // block_size)
        blocks = len(lens) * per_seq + 2
        k_cache = _randn(gen, blocks, block_size, kv_heads, head, dtype=dtype, device=device)
        v_cache = _randn(gen, blocks, block_size, kv_heads, head, dtype=dtype, device=device)
        # Non-contiguous, interleaved block ids, as a real allocator hands them out; unused slots hold NaN.
        table = torch.randperm(blocks, generator=gen)[: len(lens) * per_seq].to(torch.int32).reshape(len(lens), -1)
        for row, length in enumerate(lens):
            for position in range(length, per_seq * block_size):
                block, offset = int(table[row, position // block_size]), position % block_size
                k_cache[block, offset] = float("nan")
                v_cache[block, offset] = float("nan")
        q = _randn(gen, len(lens), heads, q_len, head, dtype=dtype, device=device)
        return (q, k_cache, v_cache, table.to(device), torch.tensor(lens, dtype=torch.int32, device=device)), {}

    name = f"paged block{block_size} lens{list(lens)} q{q_len} h{heads}/{kv_heads} d{head}"
    return OpCase("paged_attention", name, {"head_size": head, "mask": "causal", "gqa": heads != kv_heads,
                                            "block_size": block_size}, build, smoke)


def paged_attention_cases() -> Iterator[OpCase]:
    for block_size in (16, 256):
        for q_len in (1, 3):
            yield _paged(block_size, (5, block_size + 3, 3), q_len, 8, 2, 64, smoke=q_len == 1)
            yield _paged(block_size, (block_size * 2,), q_len, 4, 4, 128)


def _write(block_size: int, tokens: int, kv_heads: int, head: int, skip: bool, smoke: bool = False) -> OpCase:
    def build(gen: torch.Generator, dtype: torch.dtype, device: str) -> Built:
        blocks = -(-tokens // block_size) + 3
        k_cache = _randn(gen, blocks, block_size, kv_heads, head, dtype=dtype, device=device)
        v_cache = _randn(gen, blocks, block_size, kv_heads, head, dtype=dtype, device=device)
        k = _randn(gen, tokens, kv_heads, head, dtype=dtype, device=device)
        v = _randn(gen, tokens, kv_heads, head, dtype=dtype, device=device)
        slots = torch.randperm(blocks * block_size, generator=gen)[:tokens]
        if skip:
            slots[::3] = -1
        return (k, v, k_cache, v_cache, slots.to(device)), {}

    return OpCase("write_kv_cache", f"write {tokens} tokens block{block_size} kv{kv_heads} d{head}"
                  + (" with skipped slots" if skip else ""), {"head_size": head, "block_size": block_size},
                  build, smoke)


def write_kv_cache_cases() -> Iterator[OpCase]:
    yield _write(16, 5, 2, 64, skip=False, smoke=True)
    yield _write(16, 37, 3, 64, skip=True)
    yield _write(256, 300, 2, 128, skip=False)


# -- layers ---------------------------------------------------------------------------------------------


def _rotary(batch: int, heads: int, kv_heads: int, seq: int, head: int, start: int, scaling: dict[str, Any] | None,
            smoke: bool = False) -> OpCase:
    def build(gen: torch.Generator, dtype: torch.dtype, device: str) -> Built:
        from mistralrs_torch.ops import rope_inv_freq

        q = _randn(gen, batch, heads, seq, head, dtype=dtype, device=device)
        k = _randn(gen, batch, kv_heads, seq, head, dtype=dtype, device=device)
        positions = (torch.arange(seq) + start + torch.arange(batch)[:, None] * 7).to(device)
        return (q, k, positions, rope_inv_freq(head, 10000.0, scaling).to(device)), {}

    kind = scaling["rope_type"] if scaling else "default"
    return OpCase("rotary_embedding", f"rope {kind} b{batch} h{heads}/{kv_heads} s{seq} d{head} from {start}",
                  {"head_size": head}, build, smoke)


def rotary_embedding_cases() -> Iterator[OpCase]:
    yield _rotary(2, 4, 2, 5, 64, 0, None, smoke=True)
    yield _rotary(1, 8, 8, 1, 128, 300, None)
    yield _rotary(2, 4, 1, 7, 64, 40, {"rope_type": "linear", "factor": 4.0})
    yield _rotary(2, 4, 2, 3, 128, 1000, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})


def _rms(shape: tuple[int, ...], eps: float, smoke: bool = False) -> OpCase:
    def build(gen: torch.Generator, dtype: torch.dtype, device: str) -> Built:
        x = _randn(gen, *shape, dtype=dtype, device=device, scale=3.0)
        weight = (1.0 + 0.1 * torch.randn(shape[-1], generator=gen)).to(device=device, dtype=dtype)
        return (x, weight, eps), {}

    return OpCase("rms_norm", f"rms_norm {'x'.join(map(str, shape))} eps {eps:g}", {}, build, smoke)


def rms_norm_cases() -> Iterator[OpCase]:
    yield _rms((3, 64), 1e-5, smoke=True)
    yield _rms((2, 5, 576), 1e-6)
    yield _rms((1, 1, 7), 0.1)


# -- matmul ---------------------------------------------------------------------------------------------


def _linear(rows: int, out_features: int, in_features: int, bias: bool, smoke: bool = False) -> OpCase:
    def build(gen: torch.Generator, dtype: torch.dtype, device: str) -> Built:
        x = _randn(gen, rows, in_features, dtype=dtype, device=device)
        w = _randn(gen, out_features, in_features, dtype=dtype, device=device, scale=0.25)
        return (x, w, _randn(gen, out_features, dtype=dtype, device=device) if bias else None), {}

    return OpCase("linear", f"linear {rows}x{in_features} -> {out_features}{' +bias' if bias else ''}",
                  {"in_features": in_features, "out_features": out_features}, build, smoke)


def linear_cases() -> Iterator[OpCase]:
    yield from (_linear(1, 24, 32, False), _linear(5, 40, 48, True, smoke=True), _linear(17, 8, 256, True))


def _int8(rows: int, out_features: int, in_features: int, smoke: bool = False) -> OpCase:
    def build(gen: torch.Generator, dtype: torch.dtype, device: str) -> Built:
        x = _randn(gen, rows, in_features, dtype=dtype, device=device)
        w = torch.randint(-127, 128, (out_features, in_features), generator=gen, dtype=torch.int8)
        scale = (torch.rand(out_features, generator=gen) * 0.01 + 0.001).to(device=device, dtype=dtype)
        return (x, w.to(device), scale, _randn(gen, out_features, dtype=dtype, device=device)), {}

    return OpCase("int8_linear", f"int8 linear {rows}x{in_features} -> {out_features}",
                  {"in_features": in_features, "out_features": out_features}, build, smoke)


def int8_linear_cases() -> Iterator[OpCase]:
    yield from (_int8(1, 24, 32), _int8(5, 40, 48, smoke=True), _int8(3, 7, 33))


def _quantized(rows: int, out_features: int, in_features: int, bits: int, group_size: int, symmetric: bool,
               bias: bool, smoke: bool = False) -> OpCase:
    def build(gen: torch.Generator, dtype: torch.dtype, device: str) -> Built:
        x = _randn(gen, rows, in_features, dtype=dtype, device=device)
        codes = torch.randint(0, 2 ** bits, (out_features, in_features), generator=gen, dtype=torch.uint8)
        groups = (out_features, in_features // group_size)
        scales = torch.rand(*groups, generator=gen) * 0.02 + 0.002
        offsets = None if symmetric else -torch.rand(*groups, generator=gen) * 0.1
        # The weight stays on the CPU: preparing it (and moving it) is the backend's job.
        weight = QuantizedWeight(codes, scales, offsets, bits, group_size)
        return (x, weight, _randn(gen, out_features, dtype=dtype, device=device) if bias else None), {}

    kind = f"q{bits} g{group_size} {'sym' if symmetric else 'asym'}"
    return OpCase("quantized_linear", f"{kind} {rows}x{in_features} -> {out_features}{' +bias' if bias else ''}",
                  {"in_features": in_features, "out_features": out_features, "bits": bits, "group_size": group_size,
                   "symmetric": symmetric},
                  build, smoke)


def quantized_linear_cases() -> Iterator[OpCase]:
    # GGUF's three: Q4_0 (4-bit symmetric), Q4_1 (4-bit asymmetric), Q8_0 (8-bit symmetric), groups of 32.
    yield _quantized(1, 64, 128, 4, 32, True, False, smoke=True)
    yield _quantized(5, 96, 256, 4, 32, False, True, smoke=True)
    yield _quantized(3, 64, 96, 8, 32, True, True, smoke=True)
    yield _quantized(17, 128, 512, 4, 128, False, False)
    yield _quantized(3, 40, 64, 4, 32, False, True)  # an output count that is not a multiple of 16
    yield _quantized(2, 40, 64, 8, 64, False, True)
