"""A loaded model ready to generate: the network, its tokenizer, and generation (one prompt or many) with timings."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from mistralrs_torch._errors import ConfigError
from mistralrs_torch.models._batch import build_step
from mistralrs_torch.models._cache import DEFAULT_BLOCK_SIZE, KVCache
from mistralrs_torch.models._config import ModelConfig
from mistralrs_torch.models._engine import Engine, RequestOutput
from mistralrs_torch.models._llama import LlamaForCausalLM
from mistralrs_torch.models._sampling import SamplingParams
from mistralrs_torch.models._tokenizer import TextTokenizer
from mistralrs_torch.ops import Communicator
from mistralrs_torch.runtime import Runtime


@dataclass(frozen=True)
class Generation:
    """What one generate call produced, and how fast: prefill covers the prompt up to the first token."""

    prompt_tokens: int
    tokens: tuple[int, ...]
    text: str
    finish_reason: str  # "stop" (a stop token or string) or "length" (max_tokens or the context ran out)
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
    """A Llama-family model on a runtime, with its tokenizer; :func:`mistralrs_torch.models.load` makes one.

    ``generate``, ``generate_batch`` and ``stream`` run on the model's own :class:`Engine` (made on first use;
    ``set_kv_cache`` sizes its cache); a server drives an Engine of its own step by step.
    """

    def __init__(self, network: LlamaForCausalLM, tokenizer: TextTokenizer, path: Path) -> None:
        self.network, self.tokenizer, self.path = network, tokenizer, path
        self._engine: Engine | None = None

    @property
    def config(self) -> ModelConfig:
        return self.network.config

    @property
    def runtime(self) -> Runtime:
        return self.network.runtime

    @property
    def dtype(self) -> torch.dtype:
        return self.network.dtype

    @property
    def communicator(self) -> Communicator:
        """The ranks the model is split over (a world of one in a single process); every rank runs each call."""
        return self.network.communicator

    # -- one forward pass at a time -----------------------------------------------------------------------

    def new_cache(self, capacity: int | None = None, *, blocks: int | None = None,
                  block_size: int = DEFAULT_BLOCK_SIZE) -> KVCache:
        """An empty paged KV cache: with ``capacity``, room for one sequence of that many tokens, opened already
        (``forward`` then needs no ``sequence``); with ``blocks``, that many blocks for sequences to ``open()``."""
        if (capacity is None) == (blocks is None):
            raise ConfigError("new_cache takes capacity (one sequence of that many tokens) or blocks, not both")
        if capacity is None:
            assert blocks is not None
            return self.network.new_cache(blocks, block_size)
        cache = self.network.new_cache(max(1, -(-capacity // block_size)), block_size)
        cache.reserve(cache.open(), capacity)
        return cache

    def forward(self, ids: Sequence[int], cache: KVCache, *, sequence: int | None = None,
                all_logits: bool = False) -> torch.Tensor:
        """float32 logits after feeding ``ids`` to one sequence of ``cache``: its whole prompt first (prefill), then
        one token per call. The last token's logits (vocab,), or every token's (tokens, vocab) with all_logits.
        ``sequence`` defaults to the cache's only one."""
        if sequence is None:
            if len(cache.sequences) != 1:
                raise ConfigError(f"the cache holds {len(cache.sequences)} sequences: name one (sequence=...)")
            sequence = cache.sequences[0]
        logits = self.network.forward(build_step(cache, [(sequence, list(ids))], all_logits=all_logits))
        return logits if all_logits else logits[0]

    # -- generation -------------------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The engine behind generate, generate_batch and stream (default cache size until set_kv_cache)."""
        if self._engine is None:
            self._engine = Engine(self)
        return self._engine

    def set_kv_cache(self, *, blocks: int | None = None, memory_gib: float | None = None,
                     block_size: int | None = None) -> None:
        """Size the cache of the model's engine: ``blocks`` blocks of ``block_size`` tokens, or as many as
        ``memory_gib`` GiB hold (the CLI's --kv-cache-blocks and --kv-cache-memory)."""
        self._engine = Engine(self, kv_cache_blocks=blocks, kv_cache_memory=memory_gib, block_size=block_size)

    def stream_batch(self, prompts: Sequence[Sequence[int]],
                     params: SamplingParams | Sequence[SamplingParams] | None = None) -> Iterator[RequestOutput]:
        """Every step's outputs for ``prompts`` (token ids) run together, as they come; request ids are the
        prompts' indices. ``params`` is one SamplingParams for all or one per prompt. Closing the iterator early
        aborts what is left."""
        engine = self.engine
        if engine.has_unfinished:
            raise ConfigError(f"the model's engine is busy with {len(engine.running) + len(engine.waiting)} "
                              "requests (a stream not yet consumed): finish or close it first, or make an Engine "
                              "of your own")
        each = list(params) if isinstance(params, Sequence) else [params or SamplingParams()] * len(prompts)
        if len(each) != len(prompts):
            raise ConfigError(f"{len(prompts)} prompts but {len(each)} SamplingParams: give one for all or one each")
        ids: dict[int, int] = {}
        try:
            for index, (prompt, p) in enumerate(zip(prompts, each, strict=True)):
                ids[engine.add(prompt, p)] = index
            while engine.has_unfinished:
                for output in engine.step():
                    yield replace(output, request_id=ids[output.request_id])
        finally:
            for request_id in ids:
                engine.abort(request_id)

    def generate_batch(self, prompts: Sequence[Sequence[int]],
                       params: SamplingParams | Sequence[SamplingParams] | None = None, *,
                       on_output: Callable[[RequestOutput], None] | None = None) -> list[Generation]:
        """Generate for every prompt at once (continuous batching on the model's engine); one Generation each,
        in the prompts' order. ``on_output`` sees every step's output as it comes."""
        tokens: list[list[int]] = [[] for _ in prompts]
        text: list[list[str]] = [[] for _ in prompts]
        first: dict[int, float] = {}  # index -> when its first token came
        done: dict[int, tuple[str, float, int]] = {}  # index -> (finish reason, when, outputs)
        counts = [0] * len(prompts)
        start = time.perf_counter()
        for output in self.stream_batch(prompts, params):
            now = time.perf_counter()
            i = output.request_id
            first.setdefault(i, now)
            counts[i] += 1
            if output.token is not None:
                tokens[i].append(output.token)
            text[i].append(output.text)
            if output.finished:
                done[i] = (str(output.finish_reason), now, counts[i])
            if on_output is not None:
                on_output(output)
        # Prefill time is the time to the first token (waiting for room in the cache included).
        return [Generation(len(prompt), tuple(tokens[i]), "".join(text[i]), done[i][0], first[i] - start,
                           done[i][2] - 1, done[i][1] - first[i]) for i, prompt in enumerate(prompts)]

    def generate(self, prompt: Sequence[int], params: SamplingParams | None = None, *, max_tokens: int | None = None,
                 on_text: Callable[[str], None] | None = None) -> Generation:
        """Generate from ``prompt`` ids until a stop token or string, ``max_tokens`` or the context's end (greedy
        unless ``params`` say otherwise; ``max_tokens`` overrides theirs); ``on_text`` gets text as it forms."""
        params = params if params is not None else SamplingParams()
        if max_tokens is not None:
            params = replace(params, max_tokens=max_tokens)

        def show(output: RequestOutput) -> None:
            if on_text is not None and output.text:
                on_text(output.text)

        return self.generate_batch([prompt], params, on_output=show)[0]

    def stream(self, prompt: Sequence[int], params: SamplingParams | None = None) -> Iterator[str]:
        """The generated text piece by piece, as it forms (stop strings never shown)."""
        for output in self.stream_batch([prompt], params):
            if output.text:
                yield output.text
