"""A loaded model ready to generate: the network, its tokenizer, and greedy generation with timings."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mistralrs_torch._errors import ConfigError
from mistralrs_torch.models._config import ModelConfig
from mistralrs_torch.models._layers import KVCache
from mistralrs_torch.models._llama import LlamaForCausalLM
from mistralrs_torch.models._tokenizer import TextStream, TextTokenizer
from mistralrs_torch.runtime import Runtime

__all__ = ["Generation", "Model"]


@dataclass(frozen=True)
class Generation:
    """What one generate call produced, and how fast: prefill covers the prompt up to the first token."""

    prompt_tokens: int
    tokens: tuple[int, ...]
    text: str
    finish_reason: str  # "stop" (a stop token) or "length" (max_tokens or the context ran out)
    prefill_seconds: float
    decode_steps: int  # forward passes after the prompt's, one token each
    decode_seconds: float

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        return self.decode_steps / self.decode_seconds if self.decode_seconds > 0 else 0.0


class Model:
    """A Llama-family model on a runtime, with its tokenizer; :func:`mistralrs_torch.models.load` makes one."""

    def __init__(self, network: LlamaForCausalLM, tokenizer: TextTokenizer, path: Path) -> None:
        self.network, self.tokenizer, self.path = network, tokenizer, path

    @property
    def config(self) -> ModelConfig:
        return self.network.config

    @property
    def runtime(self) -> Runtime:
        return self.network.runtime

    @property
    def dtype(self) -> torch.dtype:
        return self.network.dtype

    def new_cache(self, capacity: int) -> KVCache:
        """An empty paged KV cache for one sequence of up to ``capacity`` tokens."""
        return self.network.new_cache(capacity)

    def forward(self, ids: Sequence[int], cache: KVCache, *, all_logits: bool = False) -> torch.Tensor:
        """float32 logits after feeding ``ids``: the whole prompt first (prefill), then one token per call."""
        return self.network.forward(torch.tensor(list(ids), device=self.runtime.device.torch_device), cache,
                                    all_logits=all_logits)

    def generate(self, prompt: Sequence[int], *, max_tokens: int = 256,
                 on_text: Callable[[str], None] | None = None) -> Generation:
        """Greedy decoding from ``prompt`` ids until a stop token or ``max_tokens``; ``on_text`` gets text as formed."""
        limit = self.config.max_position_embeddings
        if not prompt:
            raise ConfigError("the prompt is empty: give at least one token of text")
        if len(prompt) >= limit:
            raise ConfigError(f"the prompt has {len(prompt)} tokens; this model's context holds {limit} "
                              "(max_position_embeddings): shorten the prompt")
        max_tokens = min(max_tokens, limit - len(prompt))
        cache = self.new_cache(len(prompt) + max_tokens)
        stream, pieces, tokens = TextStream(self.tokenizer), [], list[int]()
        start = time.perf_counter()
        logits = self.forward(prompt, cache)
        prefill = time.perf_counter() - start
        finish, steps = "length", 0
        while len(tokens) < max_tokens:
            token = int(logits.argmax())
            if token in self.tokenizer.stop_ids:
                finish = "stop"
                break
            tokens.append(token)
            piece = stream.push(token)
            if piece:
                pieces.append(piece)
                if on_text is not None:
                    on_text(piece)
            if len(tokens) < max_tokens:
                logits = self.forward([token], cache)
                steps += 1
        decode = time.perf_counter() - start - prefill
        return Generation(len(prompt), tuple(tokens), "".join(pieces), finish, prefill, steps, decode)
