"""Greedy decoding of a tiny random-weight transformer through the runtime, checked step by step.

The prompt goes through dense causal attention, every new token through paged
attention over a block-table KV cache (blocks handed out out of order, unused
slots filled with NaN); projections use linear, the MLP weight-only int8
linear. After each step the logits are compared with a float64 reference that
recomputes the whole sequence from scratch with plain torch, without the
runtime, on the same (dtype-rounded, dequantised) weights:

    python examples/decode.py [--steps 8] [--dtype float32|bfloat16] [--features auto]

It prints which backend took each op (and any fallback), the tokens, and the
largest logit difference; exit status 1 when the logits drift past the
dtype's tolerance or a greedy token differs where the reference's top two
logits are further apart than that tolerance.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mistralrs_torch import Runtime

VOCAB, HIDDEN, HEADS, KV_HEADS, HEAD_SIZE, INTERMEDIATE, LAYERS, BLOCK_SIZE = 96, 64, 4, 2, 16, 128, 2, 4
PROMPTS = ([5, 17, 42, 8, 64], [3, 91, 27])  # ragged on purpose
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.1}


@dataclass(frozen=True)
class Int8:
    """A weight-only int8 matrix (out, in) and its float64 per-output-channel scales."""

    weight: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def quantise(cls, w: torch.Tensor) -> Int8:
        scale = w.abs().amax(dim=1) / 127
        return cls(torch.round(w / scale[:, None]).to(torch.int8), scale)

    def dequantised(self) -> torch.Tensor:
        return self.weight.double() * self.scale[:, None]


def make_weights(seed: int, max_positions: int) -> dict[str, torch.Tensor | Int8]:
    """float64 weights (int8 for the MLP), deterministic in ``seed``."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    w: dict[str, torch.Tensor | Int8] = {"embed": randn(VOCAB, HIDDEN), "pos": randn(max_positions, HIDDEN, scale=0.1),
                                         "norm": 1 + randn(HIDDEN, scale=0.1),
                                         "lm_head": randn(VOCAB, HIDDEN, scale=2 * HIDDEN**-0.5)}
    for i in range(LAYERS):
        w |= {f"{i}.ln1": 1 + randn(HIDDEN, scale=0.1), f"{i}.ln2": 1 + randn(HIDDEN, scale=0.1),
              f"{i}.wq": randn(HEADS * HEAD_SIZE, HIDDEN, scale=HIDDEN**-0.5),
              f"{i}.wk": randn(KV_HEADS * HEAD_SIZE, HIDDEN, scale=HIDDEN**-0.5),
              f"{i}.wv": randn(KV_HEADS * HEAD_SIZE, HIDDEN, scale=HIDDEN**-0.5),
              f"{i}.wo": randn(HIDDEN, HEADS * HEAD_SIZE, scale=(HEADS * HEAD_SIZE) ** -0.5),
              f"{i}.gate": Int8.quantise(randn(INTERMEDIATE, HIDDEN, scale=HIDDEN**-0.5)),
              f"{i}.up": Int8.quantise(randn(INTERMEDIATE, HIDDEN, scale=HIDDEN**-0.5)),
              f"{i}.down": Int8.quantise(randn(HIDDEN, INTERMEDIATE, scale=INTERMEDIATE**-0.5))}
    return w


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps).to(x.dtype) * weight


class RuntimeModel:
    """The model on the runtime's default device, every op through the runtime, with a paged KV cache."""

    def __init__(self, runtime: Runtime, weights: dict[str, torch.Tensor | Int8], dtype: torch.dtype,
                 max_len: int) -> None:
        self.rt, self.dtype, self.device = runtime, dtype, runtime.device.torch_device
        self.w = {name: (Int8(t.weight.to(self.device), t.scale.to(self.device, dtype)) if isinstance(t, Int8)
                         else t.to(self.device, dtype)) for name, t in weights.items()}
        blocks_per_sequence = math.ceil(max_len / BLOCK_SIZE)
        total = len(PROMPTS) * blocks_per_sequence + 1  # one block no sequence owns
        # Hand blocks out backwards and interleaved, so a wrong block-table lookup cannot go unnoticed.
        order = list(reversed(range(total)))
        self.block_table = torch.tensor([order[b::len(PROMPTS)][:blocks_per_sequence] for b in range(len(PROMPTS))],
                                        dtype=torch.int32, device=self.device)
        shape = (total, BLOCK_SIZE, KV_HEADS, HEAD_SIZE)
        # Slots no sequence has written yet hold NaN: a backend that reads past a sequence's length shows it.
        self.k_cache = [torch.full(shape, float("nan"), dtype=dtype, device=self.device) for _ in range(LAYERS)]
        self.v_cache = [torch.full(shape, float("nan"), dtype=dtype, device=self.device) for _ in range(LAYERS)]
        self.lengths = [0] * len(PROMPTS)

    def _write(self, layer: int, b: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        # k, v: (tokens, KV_HEADS, HEAD_SIZE) for positions start, start + 1, ...
        for i in range(k.shape[0]):
            block = int(self.block_table[b, (start + i) // BLOCK_SIZE])
            self.k_cache[layer][block, (start + i) % BLOCK_SIZE] = k[i]
            self.v_cache[layer][block, (start + i) % BLOCK_SIZE] = v[i]

    def _qkv(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q, k, v of layer ``i`` for x (tokens, hidden), each (tokens, heads, head size)."""
        h = rms_norm(x, self.w[f"{i}.ln1"])
        return tuple(self.rt.linear(h, self.w[f"{i}.{n}"]).view(len(x), -1, HEAD_SIZE) for n in ("wq", "wk", "wv"))

    def _mlp(self, i: int, x: torch.Tensor) -> torch.Tensor:
        gate, up, down = self.w[f"{i}.gate"], self.w[f"{i}.up"], self.w[f"{i}.down"]
        h = rms_norm(x, self.w[f"{i}.ln2"])
        a = F.silu(self.rt.int8_linear(h, gate.weight, gate.scale)) * self.rt.int8_linear(h, up.weight, up.scale)
        return x + self.rt.int8_linear(a, down.weight, down.scale)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.rt.linear(rms_norm(x, self.w["norm"]), self.w["lm_head"])

    def prefill(self, b: int, tokens: list[int]) -> torch.Tensor:
        """Logits of the last prompt token of sequence ``b``; fills its cache."""
        ids = torch.tensor(tokens, device=self.device)
        x = self.w["embed"][ids] + self.w["pos"][: len(tokens)]
        for i in range(LAYERS):
            q, k, v = self._qkv(i, x)
            self._write(i, b, 0, k, v)
            out = self.rt.attention(*(t.transpose(0, 1)[None] for t in (q, k, v)), causal=True)
            x = x + self.rt.linear(out[0].transpose(0, 1).reshape(len(tokens), -1), self.w[f"{i}.wo"])
            x = self._mlp(i, x)
        self.lengths[b] = len(tokens)
        return self._logits(x[-1:])[0]

    def decode(self, tokens: list[int]) -> torch.Tensor:
        """Logits (batch, vocab) after feeding one new token per sequence."""
        ids = torch.tensor(tokens, device=self.device)
        positions = torch.tensor(self.lengths, device=self.device)
        x = self.w["embed"][ids] + self.w["pos"][positions]
        seq_lens = torch.tensor([n + 1 for n in self.lengths], dtype=torch.int32, device=self.device)
        for i in range(LAYERS):
            q, k, v = self._qkv(i, x)
            for b in range(len(tokens)):
                self._write(i, b, self.lengths[b], k[b : b + 1], v[b : b + 1])
            out = self.rt.paged_attention(
                q[:, :, None, :], self.k_cache[i], self.v_cache[i], self.block_table, seq_lens
            )
            x = x + self.rt.linear(out.reshape(len(tokens), -1), self.w[f"{i}.wo"])
            x = self._mlp(i, x)
        self.lengths = [n + 1 for n in self.lengths]
        return self._logits(x)


def reference_logits(weights: dict[str, torch.Tensor | Int8], dtype: torch.dtype, tokens: list[int]) -> torch.Tensor:
    """Last-position logits of the whole sequence in float64, recomputed from scratch with plain torch."""
    w = {n: (t.dequantised() if isinstance(t, Int8) else t.to(dtype).double()) for n, t in weights.items()}
    x = w["embed"][torch.tensor(tokens)] + w["pos"][: len(tokens)]
    n = len(tokens)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    for i in range(LAYERS):
        h = rms_norm(x, w[f"{i}.ln1"])
        q = (h @ w[f"{i}.wq"].T).view(n, HEADS, HEAD_SIZE).transpose(0, 1)
        k = (h @ w[f"{i}.wk"].T).view(n, KV_HEADS, HEAD_SIZE).transpose(0, 1).repeat_interleave(HEADS // KV_HEADS, 0)
        v = (h @ w[f"{i}.wv"].T).view(n, KV_HEADS, HEAD_SIZE).transpose(0, 1).repeat_interleave(HEADS // KV_HEADS, 0)
        scores = (q @ k.transpose(1, 2) / math.sqrt(HEAD_SIZE)).masked_fill(~causal, float("-inf"))
        x = x + (scores.softmax(-1) @ v).transpose(0, 1).reshape(n, -1) @ w[f"{i}.wo"].T
        h = rms_norm(x, w[f"{i}.ln2"])
        x = x + (F.silu(h @ w[f"{i}.gate"].T) * (h @ w[f"{i}.up"].T)) @ w[f"{i}.down"].T
    return (rms_norm(x, w["norm"]) @ w["lm_head"].T)[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--features", default=None, help="feature selection (default: what is in force here)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    max_len = max(map(len, PROMPTS)) + args.steps
    weights = make_weights(args.seed, max_len)
    runtime = Runtime.create(args.features, paged_attention=True)
    model = RuntimeModel(runtime, weights, dtype, max_len)
    print(f"decode: {args.dtype} on {model.device}, active features: {' '.join(runtime.resolution.active)}")

    sequences = [list(p) for p in PROMPTS]
    logits = torch.stack([model.prefill(b, p) for b, p in enumerate(PROMPTS)])
    tolerance, worst, failures = TOLERANCE[dtype], 0.0, []
    for step in range(args.steps + 1):
        for b, seq in enumerate(sequences):
            expected = reference_logits(weights, dtype, seq)
            got = logits[b].double().cpu()
            difference = float((got - expected).abs().max())
            worst = max(worst, difference if math.isfinite(difference) else math.inf)  # NaN must not hide
            top2 = expected.topk(2).values
            if int(got.argmax()) != int(expected.argmax()) and float(top2[0] - top2[1]) > tolerance:
                failures.append(
                    f"step {step}, sequence {b}: token {int(got.argmax())}, reference {int(expected.argmax())}"
                )
        if step == args.steps:
            break
        # Greedy on the runtime's own logits; the reference then follows the same tokens.
        chosen = [int(t) for t in logits.argmax(-1)]
        for seq, token in zip(sequences, chosen, strict=True):
            seq.append(token)
        logits = model.decode(chosen)

    for binding in runtime.bindings:
        print(f"  {binding.describe()}")
    for b, seq in enumerate(sequences):
        print(f"sequence {b}: prompt {PROMPTS[b]} -> {seq[len(PROMPTS[b]) :]}")
    verdict = "matches" if worst <= tolerance and not failures else "DIFFERS FROM"
    print(
        f"{verdict} the float64 reference: max logit difference {worst:.2e} (tolerance {tolerance:g}), "
        f"{len(runtime.fallbacks)} fallback(s)"
    )
    for failure in failures:
        print(f"  {failure}")
    return 0 if verdict == "matches" else 1


if __name__ == "__main__":
    sys.exit(main())
