"""Choosing the next token: greedy or sampled, per request, for a whole batch of logits at once.

The order is transformers': the repetition penalty on the raw logits, then
temperature, top-k, top-p and min-p, then a draw. Each request draws from its
own generator (torch.Generator seeded with its seed): its k-th sampled token
takes the k-th float64 of ``torch.rand`` on that generator, u, and picks the
first token whose cumulative probability exceeds u. So a seed gives the same
tokens whatever else runs in the batch (up to logits moving by rounding).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mistralrs_torch._errors import InputError

_MAX_SEED = 2**64 - 1


def _number(name: str, value: object, ok: bool, valid: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok:
        raise InputError(f"{name}={value!r}", "is out of range", f"give {valid}")


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks tokens and when it stops; every field is checked when it is made.

    temperature 0 is greedy (the most likely token); top_k 0, top_p 1, min_p 0 and repetition_penalty 1 are off.
    ``stop`` strings end generation where they appear in the decoded text (the stop string itself is not
    returned); ``stop_token_ids`` add to the model's own stop tokens (eos and generation_config's);
    ``ignore_eos`` drops the model's own, so only max_tokens, the context and the stops given here end it
    (benchmarks generating a fixed number of tokens).
    """

    max_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise InputError(f"max_tokens={self.max_tokens!r}", "is out of range", "give a whole number >= 1")
        _number("temperature", self.temperature, self.temperature >= 0, "a number >= 0 (0 is greedy)")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise InputError(f"top_k={self.top_k!r}", "is out of range", "give a whole number >= 0 (0 is off)")
        _number("top_p", self.top_p, 0 < self.top_p <= 1, "a number in (0, 1] (1 is off)")
        _number("min_p", self.min_p, 0 <= self.min_p <= 1, "a number in [0, 1] (0 is off)")
        _number("repetition_penalty", self.repetition_penalty, self.repetition_penalty > 0,
                "a number > 0 (1 is off; above 1 discourages repeats)")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed <= _MAX_SEED):
            raise InputError(f"seed={self.seed!r}", "is out of range", f"give a whole number in 0..{_MAX_SEED}")
        if isinstance(self.stop, str):  # one stop string given bare
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        for text in self.stop:
            if not isinstance(text, str) or not text:
                raise InputError(f"stop={self.stop!r}", f"holds {text!r}", "give non-empty strings")
        if not isinstance(self.ignore_eos, bool):
            raise InputError(f"ignore_eos={self.ignore_eos!r}", "is not a bool", "give True or False")
        for token in self.stop_token_ids:
            if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                raise InputError(f"stop_token_ids={self.stop_token_ids!r}", f"holds {token!r}",
                                 "give token ids (whole numbers >= 0)")


class SamplingState:
    """One request's sampling: its parameters, its generator and, with a repetition penalty, the tokens seen."""

    def __init__(self, params: SamplingParams, vocab: int, seen: Sequence[int], device: torch.device) -> None:
        self.params = params
        self.greedy = params.temperature == 0
        self.generator = torch.Generator().manual_seed(params.seed if params.seed is not None
                                                       else secrets.randbits(63))
        self.seen: torch.Tensor | None = None
        if params.repetition_penalty != 1:
            self.seen = torch.zeros(vocab, dtype=torch.bool, device=device)
            self.seen[torch.tensor(list(seen), dtype=torch.long, device=device)] = True

    def draw(self) -> float:
        return float(torch.rand((), generator=self.generator, dtype=torch.float64))

    def saw(self, token: int) -> None:
        if self.seen is not None:
            self.seen[token] = True


def penalize(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """transformers' repetition penalty: a seen token's logit is divided by ``penalty`` when positive, multiplied
    when negative. logits (rows, vocab), seen (rows, vocab) bool, penalty (rows,)."""
    p = penalty[:, None].to(logits.dtype)
    return torch.where(seen, torch.where(logits < 0, logits * p, logits / p), logits)


def filtered_probabilities(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                           top_p: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """The distribution each row samples from: softmax(logits / temperature) restricted, in this order, to the
    top_k largest logits (ties with the k-th kept; 0 keeps all), to the smallest set of most likely tokens whose
    probability reaches top_p (a token stays when the tokens more likely than it hold less than top_p), and to
    the tokens at least min_p times as likely as the most likely one; renormalised. Rows of logits (rows, vocab)
    with per-row parameters (rows,); temperatures > 0."""
    x = logits / temperature[:, None].to(logits.dtype)
    vocab = x.shape[-1]
    if bool((top_k > 0).any()):
        k = top_k.clamp(max=vocab)
        largest = x.topk(int(k.max()), dim=-1).values
        kth = largest.gather(1, (k.clamp(min=1) - 1)[:, None].long())
        x = x.masked_fill((x < kth) & (k > 0)[:, None], -math.inf)
    if bool((top_p < 1).any()):
        ordered, order = x.sort(dim=-1, descending=True)
        p = ordered.softmax(-1)
        drop = ((p.cumsum(-1) - p) >= top_p[:, None].to(p.dtype)) & (top_p < 1)[:, None]
        x = x.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), -math.inf)
    if bool((min_p > 0).any()):
        p = x.softmax(-1)
        x = x.masked_fill(p < min_p[:, None].to(p.dtype) * p.max(-1, keepdim=True).values, -math.inf)
    return x.softmax(-1)


def sample(logits: torch.Tensor, states: Sequence[SamplingState]) -> list[int]:
    """The next token of each row of ``logits`` (rows, vocab) float32, row i chosen by ``states[i]``."""
    device = logits.device
    penalized = [i for i, s in enumerate(states) if s.seen is not None]
    if penalized:
        index = torch.tensor(penalized, device=device)
        seen = torch.stack([states[i].seen for i in penalized])  # type: ignore[misc]
        penalty = torch.tensor([states[i].params.repetition_penalty for i in penalized], device=device)
        logits = logits.index_put((index,), penalize(logits[index], seen, penalty))
    tokens = logits.argmax(-1)
    sampled = [i for i, s in enumerate(states) if not s.greedy]
    if sampled:
        index = torch.tensor(sampled, device=device)
        params = [states[i].params for i in sampled]

        def column(values: list[float] | list[int], dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        probs = filtered_probabilities(logits[index].double(), column([p.temperature for p in params], torch.float64),
                                       column([p.top_k for p in params], torch.long),
                                       column([p.top_p for p in params], torch.float64),
                                       column([p.min_p for p in params], torch.float64))
        cdf = probs.cumsum(-1)
        u = column([states[i].draw() for i in sampled], torch.float64)
        chosen = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0].clamp(max=cdf.shape[-1] - 1)
        tokens = tokens.index_put((index,), chosen)
    return [int(t) for t in tokens.tolist()]
