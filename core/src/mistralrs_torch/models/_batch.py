"""One forward pass over many sequences: the packed tokens and, per attention span, where they go and what they see.

The tokens of every sequence in a step are packed into one row (prompts
first, then one token per decoding sequence), so every linear layer runs once
over all of them. Attention splits them again: prompts (prefill) run dense
causal attention over their own tokens, padded at the end to the longest
prompt (causality alone keeps a prompt's rows off its padding, and the
padding rows are dropped after); decoding sequences run paged attention over
the cache with their own lengths.
A layer with a sliding window is a different "span": its tokens go to ring
slots, its prompt masks add the window, its decode reads at most W keys.
Everything here is built once per step with tensor ops, never per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mistralrs_torch._errors import ConfigError
from mistralrs_torch.models._cache import KVCache


@dataclass(frozen=True)
class SpanInputs:
    """What the layers with one span (None: the whole sequence; W: a window of W tokens) read and write."""

    slots: torch.Tensor  # (tokens,) int64: each token's cache slot, -1 where a window drops it
    mask: torch.Tensor | None  # (1, 1, L, L) bool: the window over the padded prompts; None: causal alone
    table: torch.Tensor | None  # (decodes, blocks) int32, None without decoding sequences
    lens: torch.Tensor | None  # (decodes,) int32: keys each decoding sequence attends to, its new token included


@dataclass(frozen=True)
class StepInputs:
    """The packed tokens of one step and the layout the attention layers need."""

    cache: KVCache
    ids: torch.Tensor  # (tokens,) int64
    positions: torch.Tensor  # (1, tokens) int64
    prompts: int  # sequences in prefill; their tokens come first
    prompt_tokens: int
    prompt_len: int  # the longest prompt: the padded length of dense attention
    pad: torch.Tensor | None  # (prompts * prompt_len,) packed index of each padded row; None when none is padded
    unpad: torch.Tensor | None  # (prompt_tokens,) padded row of each packed prompt token
    spans: dict[int | None, SpanInputs]
    outputs: torch.Tensor | None  # tokens whose logits are wanted, one per sequence in call order; None: all

    @property
    def decodes(self) -> int:
        return self.ids.shape[0] - self.prompt_tokens


def _span(cache: KVCache, window: int | None, rows: torch.Tensor, positions: torch.Tensor, ends: torch.Tensor,
          prompt_len: int, decode_rows: torch.Tensor, decode_ends: torch.Tensor) -> SpanInputs:
    """``rows``, ``positions`` and ``ends`` are per packed token: its sequence's row, its position and the
    sequence's length after this step."""
    size = cache.block_size
    ring = positions if window is None else positions % window
    slots = cache.table[rows, ring // size].long() * size + ring % size
    if window is not None:  # of a prompt longer than the window only the last W tokens stay
        slots = torch.where(positions >= ends - window, slots, -1)
    mask = None
    if window is not None and prompt_len > window:
        index = torch.arange(prompt_len)
        mask = (index[None, :] > index[:, None] - window)[None, None]  # causality is the op's
    table = lens = None
    if decode_rows.numel():
        lens = decode_ends if window is None else decode_ends.clamp(max=window)
        table = cache.table[decode_rows, :-(-int(lens.max()) // size)]
        lens = lens.to(torch.int32)
    return SpanInputs(slots, mask, table, lens)


def build_step(cache: KVCache, sequences: Sequence[tuple[int, Sequence[int]]], *,
               all_logits: bool = False) -> StepInputs:
    """Inputs of one forward pass feeding each (sequence, new token ids) pair; reserves and records the room.

    A sequence with nothing cached takes its whole prompt (prefill); one with tokens cached takes exactly one
    new token (decode). ``all_logits`` asks for every token's logits instead of each sequence's last.
    """
    prompts = [(s, ids) for s, ids in sequences if cache.length(s) == 0]
    decodes = [(s, ids) for s, ids in sequences if cache.length(s) > 0]
    if any(len(ids) != 1 for _, ids in decodes):
        raise ConfigError("a sequence with tokens in the cache continues one token at a time (no chunked "
                          "prefill): feed its prompt in one call, then one token per call")
    if any(len(ids) == 0 for _, ids in prompts):
        raise ConfigError("a prompt is empty: give at least one token")
    ordered = [*prompts, *decodes]
    for s, ids in ordered:
        cache.reserve(s, cache.length(s) + len(ids))
    starts = torch.tensor([cache.advance(s, len(ids)) for s, ids in ordered])
    counts = torch.tensor([len(ids) for _, ids in ordered])
    rows_seq = torch.tensor([s for s, _ in ordered])
    ends_seq = starts + counts
    offsets = torch.cumsum(counts, 0) - counts  # first packed token of each sequence
    n = len(prompts)
    if n:
        rows, ends = torch.repeat_interleave(rows_seq, counts), torch.repeat_interleave(ends_seq, counts)
        positions = torch.arange(int(counts.sum())) + torch.repeat_interleave(starts - offsets, counts)
    else:  # decode only: one token per sequence
        rows, ends, positions = rows_seq, ends_seq, starts
    prompt_lens = counts[:n]
    prompt_len = int(prompt_lens.max()) if n else 0
    pad = unpad = None
    if n and bool((prompt_lens < prompt_len).any()):
        # Padded row r of prompt i reads packed token offsets[i] + min(r, len - 1): a real token, dropped after.
        index = torch.arange(prompt_len)[None, :]
        pad = (offsets[:n, None] + torch.minimum(index, prompt_lens[:, None] - 1)).reshape(-1)
        unpad = (torch.arange(n)[:, None] * prompt_len + index)[index < prompt_lens[:, None]]
    spans = {w: _span(cache, w, rows, positions, ends, prompt_len, rows_seq[n:], ends_seq[n:])
             for w in dict.fromkeys(cache.windows)}
    order = {s: i for i, (s, _) in enumerate(ordered)}
    outputs = None if all_logits else (offsets + counts - 1)[[order[s] for s, _ in sequences]]
    packed = torch.tensor([t for _, seq_ids in ordered for t in seq_ids])
    device = cache.device

    def move(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device)

    spans = {w: SpanInputs(s.slots.to(device), move(s.mask), move(s.table), move(s.lens)) for w, s in spans.items()}
    return StepInputs(cache, packed.to(device), positions[None].to(device), n, int(prompt_lens.sum()), prompt_len,
                      move(pad), move(unpad), spans, move(outputs))
