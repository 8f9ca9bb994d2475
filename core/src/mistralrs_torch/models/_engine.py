"""The step-level generation engine: requests join and leave between steps (continuous batching).

Each ``step()`` is one forward pass over the prompts admitted this step
(prefill) and one new token of every running request (decode), then one
sampling call for all of them. Blocks of the shared KV cache are taken as
sequences grow and returned when they finish or are aborted. A request that
could never fit in the cache is refused when added; one that does not fit
yet waits. When running requests outgrow the free blocks, the newest is
preempted: its blocks are freed and it waits to be recomputed (its prompt
and the tokens it produced, prefilled again), never truncated or corrupted.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from mistralrs_torch._errors import ConfigError, ContextLengthError, InputError
from mistralrs_torch.models._batch import build_step
from mistralrs_torch.models._cache import DEFAULT_BLOCK_SIZE, KVCache, cache_blocks
from mistralrs_torch.models._sampling import SamplingParams, SamplingState, sample
from mistralrs_torch.models._stops import StopText
from mistralrs_torch.models._tokenizer import TextStream

if TYPE_CHECKING:
    from mistralrs_torch.models._model import Model

@dataclass(frozen=True)
class RequestOutput:
    """What one step produced for one request."""

    request_id: int
    token: int | None  # the token added; None when the request ended on a stop token (which is not added)
    text: str  # text now safe to show ('' while a character or a possible stop string is incomplete)
    finished: bool
    finish_reason: str | None  # "stop" (a stop token or string) or "length" (max_tokens or the context); None
    logits: torch.Tensor | None = None  # (vocab,) float32 the token was chosen from, with Engine(keep_logits=True)


class _Request:
    def __init__(self, request_id: int, prompt: tuple[int, ...], params: SamplingParams, limit: int,
                 stops: frozenset[int], sampling: SamplingState, stream: TextStream) -> None:
        self.id, self.prompt, self.params, self.limit, self.stops = request_id, prompt, params, limit, stops
        self.tokens = list(prompt)  # the prompt, then every token generated
        self.sampling, self.stream, self.stop_text = sampling, stream, StopText(params.stop)
        self.sequence: int | None = None  # its handle in the cache while running

    @property
    def generated(self) -> int:
        return len(self.tokens) - len(self.prompt)


class Engine:
    """Runs many requests over one model and one shared KV cache, one batched forward pass per ``step()``.

    The cache holds ``kv_cache_blocks`` blocks of ``block_size`` tokens, or as many as ``kv_cache_memory``
    GiB hold (default: enough for ``max_num_seqs`` full contexts, at most 1 GiB). At most ``max_num_seqs``
    requests run at once; one step prefills at most ``max_prefill_tokens`` prompt tokens (a longer prompt
    runs alone). ``keep_logits`` puts each token's logits in its output (for checks and debugging).
    """

    def __init__(self, model: Model, *, kv_cache_blocks: int | None = None, kv_cache_memory: float | None = None,
                 block_size: int | None = None, max_num_seqs: int = 256, max_prefill_tokens: int = 4096,
                 keep_logits: bool = False) -> None:
        size = DEFAULT_BLOCK_SIZE if block_size is None else block_size
        for name, value in (("block_size", size), ("max_num_seqs", max_num_seqs),
                            ("max_prefill_tokens", max_prefill_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name}={value!r}", "is out of range", "give a whole number >= 1")
        self.model, self.network, self.tokenizer = model, model.network, model.tokenizer
        self.context = model.config.max_position_embeddings
        full = -(-self.context // size)
        blocks = cache_blocks(block_bytes=self.network.cache_block_bytes(size), blocks=kv_cache_blocks,
                              memory_gib=kv_cache_memory, default_blocks=max_num_seqs * full)
        self.cache: KVCache = self.network.new_cache(blocks, size)
        self.max_num_seqs, self.max_prefill_tokens, self.keep_logits = max_num_seqs, max_prefill_tokens, keep_logits
        self._ids = itertools.count()
        self._waiting: list[_Request] = []  # by request id, which is arrival order
        self._running: list[_Request] = []  # by request id

    # -- introspection ----------------------------------------------------------------------------------

    @property
    def running(self) -> tuple[int, ...]:
        return tuple(r.id for r in self._running)

    @property
    def waiting(self) -> tuple[int, ...]:
        return tuple(r.id for r in self._waiting)

    @property
    def has_unfinished(self) -> bool:
        return bool(self._running or self._waiting)

    # -- requests ---------------------------------------------------------------------------------------

    def add(self, prompt: Sequence[int], params: SamplingParams | None = None) -> int:
        """Queue a request; its id. Raises at once if the prompt is empty or too long for the context, a token
        id is outside the vocabulary, or the request could never fit in the cache: ContextLengthError for a prompt
        that fills the context, KVCacheFullError for a request the cache could never hold."""
        params = params if params is not None else SamplingParams()
        prompt = tuple(int(t) for t in prompt)
        vocab = self.network.config.vocab_size
        if not prompt:
            raise ConfigError("the prompt is empty: give at least one token of text")
        if len(prompt) >= self.context:
            raise ContextLengthError(f"the prompt has {len(prompt)} tokens; this model's context holds "
                                     f"{self.context} (max_position_embeddings): shorten the prompt",
                                     tokens=len(prompt), context=self.context)
        bad = next((t for t in (*prompt, *params.stop_token_ids) if not 0 <= t < vocab), None)
        if bad is not None:
            raise InputError(f"token id {bad}", "is outside the vocabulary", f"give ids in 0..{vocab - 1}")
        limit = min(params.max_tokens, self.context - len(prompt))
        # The last token is never fed back, so the cache holds at most prompt + limit - 1 tokens.
        needed = self.cache.blocks_needed(len(prompt) + limit - 1)
        if needed > self.cache.total_blocks:
            raise self.cache.full_error(needed, f"a request of {len(prompt)} prompt tokens and up to {limit} new "
                                                "ones (max_tokens)")
        request = _Request(next(self._ids), prompt, params, limit,
                           frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos
                                                               else self.tokenizer.stop_ids),
                           SamplingState(params, vocab, prompt, self.cache.device), TextStream(self.tokenizer))
        self._waiting.append(request)
        return request.id

    def abort(self, request_id: int) -> bool:
        """Drop a waiting or running request and free its blocks; False if it is not (or no longer) there."""
        for queue in (self._waiting, self._running):
            for request in queue:
                if request.id == request_id:
                    queue.remove(request)
                    self._release(request)
                    return True
        return False

    def _release(self, request: _Request) -> None:
        if request.sequence is not None:
            self.cache.close(request.sequence)
            request.sequence = None

    # -- scheduling -------------------------------------------------------------------------------------

    def _preempt(self, request: _Request) -> None:
        """Free the blocks of a running request; it waits, in arrival order, to be recomputed."""
        self._running.remove(request)
        self._release(request)
        self._waiting.append(request)
        self._waiting.sort(key=lambda r: r.id)

    def _schedule(self) -> tuple[list[_Request], list[_Request]]:
        """(requests to prefill, requests to decode) this step, making room by preemption where needed."""
        decodes = list(self._running)
        # Oldest first, each running request grows by one token; while blocks run short the newest is preempted.
        grown = 0  # blocks the requests before this one take
        index = 0
        while index < len(decodes):
            request = decodes[index]
            growth = self._growth(request)
            while growth > self.cache.free_blocks - grown and decodes[-1] is not request:
                self._preempt(decodes.pop())
            if growth > self.cache.free_blocks - grown:  # it is the newest left, so it waits itself
                self._preempt(decodes.pop())
                break
            grown += growth
            index += 1
        prefills: list[_Request] = []
        free = self.cache.free_blocks - grown
        # Keep a little room so that what runs can grow a while before the next request is taken in.
        reserve = max(1, self.cache.total_blocks // 100) if decodes else 0
        tokens = 0
        while self._waiting and len(decodes) + len(prefills) < self.max_num_seqs:
            request = self._waiting[0]
            need = self.cache.blocks_needed(len(request.tokens))
            if (prefills and tokens + len(request.tokens) > self.max_prefill_tokens) or need > free - reserve:
                break
            self._waiting.pop(0)
            request.sequence = self.cache.open()
            prefills.append(request)
            free -= need
            tokens += len(request.tokens)
        self._running = sorted(decodes + prefills, key=lambda r: r.id)
        return prefills, decodes

    def _growth(self, request: _Request) -> int:
        """New blocks a running request needs to take its latest token."""
        assert request.sequence is not None
        return self.cache.growth(request.sequence, len(request.tokens))

    # -- the step ---------------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """One forward pass and one new token for every request scheduled; their outputs, in request order."""
        prefills, decodes = self._schedule()
        batch = [*prefills, *decodes]
        if not batch:
            return []
        entries = [(r.sequence, r.tokens[self.cache.length(r.sequence):]) for r in batch if r.sequence is not None]
        try:
            logits = self.network.forward(build_step(self.cache, entries))
            chosen = self._agreed(sample(logits, [r.sampling for r in batch]), logits.device)
        except BaseException:
            for request in batch:  # their cache contents are unknown now: they end here, the others go on
                self.abort(request.id)
            raise
        outputs = [self._advance(r, token, logits[i] if self.keep_logits else None)
                   for i, (r, token) in enumerate(zip(batch, chosen, strict=True))]
        return sorted(outputs, key=lambda o: o.request_id)

    def _agreed(self, chosen: list[int], device: torch.device) -> list[int]:
        """Rank 0's tokens, on every rank of a tensor-parallel model: the ranks' logits can differ in the last bits
        (measured selection may bind another backend on another rank), and a near tie would then split them into
        different sequences whose collectives no longer pair up."""
        communicator = self.network.communicator
        if communicator.world_size == 1:
            return chosen
        tokens = communicator.broadcast(torch.tensor(chosen, dtype=torch.int64, device=device), src=0)
        return [int(t) for t in tokens.tolist()]

    def _advance(self, request: _Request, token: int, logits: torch.Tensor | None) -> RequestOutput:
        if token in request.stops:
            self._finish(request)
            return RequestOutput(request.id, None, request.stop_text.flush(), True, "stop", logits)
        request.tokens.append(token)
        request.sampling.saw(token)
        text, stopped = request.stop_text.push(request.stream.push(token))
        if stopped or request.generated >= request.limit:
            self._finish(request)
            return RequestOutput(request.id, token, text if stopped else text + request.stop_text.flush(), True,
                                 "stop" if stopped else "length", logits)
        return RequestOutput(request.id, token, text, False, None, logits)

    def _finish(self, request: _Request) -> None:
        self._running.remove(request)
        self._release(request)
