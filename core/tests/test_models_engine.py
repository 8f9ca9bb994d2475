"""The engine: ragged batches and continuous batching against each prompt alone and against transformers' generate.

Tolerance: 1e-4 absolute on float32 logits (as in test_models_hf). A batch
changes the shapes of every matmul, which moves logits by about 2e-6 here.
Every step's logits are compared within the tolerance; the chosen tokens are
asserted equal wherever the reference's top-2 margin exceeds it. A step whose
margin is within the tolerance may legitimately pick the other token, after
which the two runs are different sequences and the comparison of that
request ends there (each test checks that enough steps were compared).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from mistralrs_torch import ConfigError, ContextLengthError, InputError, KVCacheFullError
from mistralrs_torch.models import Engine, Model, RequestOutput, SamplingParams, load

TOLERANCE = 1e-4
WINDOW = 8
PROMPTS = [[5, 80, 17, 42, 8, 64, 3, 91, 27, 11, 150, 9, 33, 210, 14, 77, 60, 120, 4, 45], [7, 8, 9],
           [100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110], [30], [250, 12, 99, 31, 70, 71, 72]]
ARCHITECTURES = {"llama": ("llama", {}), "qwen2-bias": ("qwen2", {}),
                 "mistral-window": ("mistral", {"sliding_window": WINDOW})}


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny: Any) -> tuple[Any, Model]:
    """(transformers model, our model of the same folder), per architecture."""
    model_type, overrides = ARCHITECTURES[request.param]
    reference = tiny.hf_model(model_type, overrides)
    return reference, load(tiny.save_folder(reference, tmp_path_factory.mktemp(request.param)))


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory, tiny: Any) -> Model:
    return load(tiny.save_folder(tiny.hf_model("llama"), tmp_path_factory.mktemp("llama")))


def _run(engine: Engine, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
         ) -> list[list[RequestOutput]]:
    """Every request's outputs, all requests added before the first step."""
    each = params if isinstance(params, list) else [params] * len(prompts)
    ids = [engine.add(p, q) for p, q in zip(prompts, each, strict=True)]
    outputs: dict[int, list[RequestOutput]] = {i: [] for i in ids}
    while engine.has_unfinished:
        for output in engine.step():
            outputs[output.request_id].append(output)
    assert engine.cache.used_blocks == 0
    return [outputs[i] for i in ids]


def _alone(model: Model, prompt: list[int], params: SamplingParams) -> list[RequestOutput]:
    return _run(Engine(model, keep_logits=True), [prompt], params)[0]


def _logits(outputs: list[RequestOutput]) -> list[torch.Tensor]:
    assert all(o.logits is not None for o in outputs)
    return [o.logits for o in outputs]  # type: ignore[misc]


def _compare(reference: list[torch.Tensor], candidate: list[torch.Tensor]) -> tuple[float, int]:
    """(largest logit difference, steps with a clear margin) over the greedy steps both runs share."""
    worst, clear = 0.0, 0
    for expected, got in zip(reference, candidate, strict=True):
        worst = max(worst, float((expected - got).abs().max()))
        top2 = expected.topk(2).values
        if float(top2[0] - top2[1]) > TOLERANCE:
            assert int(got.argmax()) == int(expected.argmax())
            clear += 1
        elif int(got.argmax()) != int(expected.argmax()):
            return worst, clear  # a near tie went the other way: another sequence from here on
    assert len(reference) == len(candidate)
    return worst, clear


def _agree(reference: list[torch.Tensor], tokens: list[int]) -> int:
    """Steps whose token is the reference's where its top-2 margin exceeds the tolerance (checked), up to the first
    near tie that went the other way."""
    clear = 0
    for expected, token in zip(reference, tokens, strict=True):
        top2 = expected.topk(2).values
        if float(top2[0] - top2[1]) > TOLERANCE:
            assert token == int(expected.argmax())
            clear += 1
        elif token != int(expected.argmax()):
            break
    return clear


def test_a_ragged_batch_gives_each_prompt_what_it_gets_alone(pair: tuple[Any, Model]) -> None:
    _, model = pair
    params = SamplingParams(max_tokens=10)
    engine = Engine(model, keep_logits=True)
    batch = _run(engine, PROMPTS, params)
    total = 0
    for prompt, outputs in zip(PROMPTS, batch, strict=True):
        worst, clear = _compare(_logits(_alone(model, prompt, params)), _logits(outputs))
        assert worst < TOLERANCE
        total += clear
    assert total >= 0.8 * sum(len(o) for o in batch)


def test_a_batch_matches_transformers_generate(pair: tuple[Any, Model]) -> None:
    reference, model = pair
    batch = _run(Engine(model, keep_logits=True), PROMPTS, SamplingParams(max_tokens=10))
    total = 0
    for prompt, outputs in zip(PROMPTS, batch, strict=True):
        with torch.no_grad():
            theirs = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt)),
                                        do_sample=False, max_new_tokens=10, output_logits=True,
                                        return_dict_in_generate=True, pad_token_id=0)
        worst, clear = _compare([t[0].float() for t in theirs.logits], _logits(outputs))
        assert worst < TOLERANCE
        total += clear
    assert total >= 0.8 * sum(len(o) for o in batch)


def test_the_sliding_window_is_exercised_under_batching(tiny: Any, tmp_path: Path) -> None:
    """Prompts of 20 and 11 tokens with a window of 8, 10 decode steps: without the window the logits differ far
    beyond the tolerance, so the matches above (mistral-window) prove the window is applied in the batch."""
    windowed = tiny.hf_model("mistral", {"sliding_window": WINDOW})
    full = tiny.hf_model("mistral", {"sliding_window": None})
    model = load(tiny.save_folder(windowed, tmp_path / "mistral"))
    assert model.config.sliding_windows == (WINDOW, WINDOW)
    outputs = _run(Engine(model, keep_logits=True), PROMPTS[:3], SamplingParams(max_tokens=10))
    for prompt, steps in zip(PROMPTS[:3], outputs, strict=True):
        tokens = [*prompt, *(o.token for o in steps[:-1])]
        with torch.no_grad():
            logits = full(torch.tensor([tokens])).logits[0, len(prompt) - 1:]
        assert len(tokens) > WINDOW
        assert max(float((ours - theirs).abs().max()) for ours, theirs in zip(_logits(steps), logits, strict=True)) \
            > 100 * TOLERANCE


def test_requests_joining_and_leaving_between_steps_get_their_own_tokens(llama: Model) -> None:
    params = SamplingParams(max_tokens=12)
    engine = Engine(llama, keep_logits=True)
    outputs: dict[int, list[RequestOutput]] = {}
    first = engine.add(PROMPTS[0], params)
    for step in range(40):
        if step == 3:  # joins while the first decodes: this step runs a prefill and a decode together
            joined = engine.add(PROMPTS[2], params)
        if step == 5:
            late = engine.add(PROMPTS[4], params)
            aborted = engine.add(PROMPTS[1], params)
        if step == 7:
            assert engine.abort(aborted) and not engine.abort(aborted)
        for output in engine.step():
            outputs.setdefault(output.request_id, []).append(output)
        if step == 3:
            assert engine.running == (first, joined)
        if not engine.has_unfinished:
            break
    assert not engine.has_unfinished and engine.cache.used_blocks == 0
    assert len(outputs[aborted]) == 2  # two steps, then gone
    for request, prompt in ((first, PROMPTS[0]), (joined, PROMPTS[2]), (late, PROMPTS[4])):
        worst, clear = _compare(_logits(_alone(llama, prompt, params)), _logits(outputs[request]))
        assert worst < TOLERANCE and clear >= 8


def test_preemption_in_a_small_cache_recomputes_without_corrupting_anyone(llama: Model) -> None:
    """Four requests of up to 20 + 30 tokens (4 blocks each at the end) in a cache of 8 blocks: the newest are
    preempted and recomputed, and every request still gets the tokens it gets alone."""
    params = SamplingParams(max_tokens=30)
    engine = Engine(llama, kv_cache_blocks=8, keep_logits=True)
    prompts = [PROMPTS[0], PROMPTS[2], PROMPTS[4], PROMPTS[0][::-1]]
    ids = [engine.add(p, params) for p in prompts]
    outputs: dict[int, list[RequestOutput]] = {i: [] for i in ids}
    preempted = set()
    while engine.has_unfinished:
        for output in engine.step():
            outputs[output.request_id].append(output)
        assert engine.cache.used_blocks <= 8
        preempted |= {i for i in engine.waiting if outputs[i]}
    assert preempted and engine.cache.used_blocks == 0
    for request, prompt in zip(ids, prompts, strict=True):
        worst, clear = _compare(_logits(_alone(llama, prompt, params)), _logits(outputs[request]))
        assert worst < TOLERANCE and clear >= 20


def test_blocks_return_on_finish_and_abort(llama: Model) -> None:
    engine = Engine(llama, kv_cache_blocks=4, block_size=16)
    finishing = engine.add(PROMPTS[1], SamplingParams(max_tokens=2))
    running = engine.add(PROMPTS[0], SamplingParams(max_tokens=30))
    waiting = engine.add(PROMPTS[0], SamplingParams(max_tokens=30))
    engine.step()
    assert engine.running == (finishing, running) and engine.waiting == (waiting,)  # 1 + 2 blocks; 2 more won't fit
    assert engine.cache.used_blocks == 3
    engine.step()
    assert engine.running == (running,) and engine.cache.used_blocks == 2
    assert engine.abort(waiting) and engine.abort(running) and not engine.abort(12345)
    assert engine.cache.used_blocks == 0 and not engine.has_unfinished and engine.step() == []


def test_a_request_that_can_never_fit_is_refused_when_added(llama: Model) -> None:
    engine = Engine(llama, kv_cache_blocks=2, block_size=16)
    with pytest.raises(KVCacheFullError, match=r"a request of 20 prompt tokens and up to 20 new ones \(max_tokens\) "
                                               r"needs 3 block\(s\) of 16 tokens, 2 of 2 are free: give the cache"):
        engine.add(PROMPTS[0], SamplingParams(max_tokens=20))
    assert not engine.has_unfinished
    engine.add(PROMPTS[0], SamplingParams(max_tokens=13))  # 32 tokens in the cache at most: 2 blocks fit


def test_every_rank_of_a_tensor_parallel_model_takes_rank_0s_tokens(llama: Model,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    token = next(t for t in range(3, 100) if t not in llama.tokenizer.stop_ids)

    class Rank1:
        """Rank 1 of two: the broadcast brings rank 0's token, whatever this rank sampled."""

        rank, world_size = 1, 2

        def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
            assert src == 0 and tensor.dtype == torch.int64
            return tensor.fill_(token)

    engine = Engine(llama)
    monkeypatch.setattr(llama.network, "communicator", Rank1())
    engine.add([5, 6, 7], SamplingParams(max_tokens=2, temperature=0.9, seed=4))
    engine.add([8, 9], SamplingParams(max_tokens=2))
    assert [o.token for o in engine.step()] == [token, token]


@pytest.mark.parametrize(("prompt", "message", "error"), [
    ([], "the prompt is empty", ConfigError),
    (list(range(128)), "the prompt has 128 tokens; this model's context holds 128", ContextLengthError),
    ([3, 267], r"token id 267 is outside the vocabulary: give ids in 0\.\.266", InputError),
])
def test_bad_prompts_are_refused_when_added(llama: Model, prompt: list[int], message: str, error: type) -> None:
    with pytest.raises(error, match=message):
        Engine(llama).add(prompt)


# -- sampling and stopping through the engine ------------------------------------------------------------------


def _tokens(outputs: list[RequestOutput]) -> list[int | None]:
    return [o.token for o in outputs]


def test_the_same_seed_gives_the_same_tokens_alone_and_inside_a_batch(llama: Model) -> None:
    """Each sampled step takes the request's next uniform u of its own generator and the first token whose
    cumulative probability exceeds u. In a batch the logits move by at most the tolerance, which moves each
    cumulative probability by at most 2 * tolerance / temperature; where u is further than that from every
    boundary of the reference's distribution, the token must be the same."""
    from mistralrs_torch.models._sampling import filtered_probabilities

    sampled = SamplingParams(max_tokens=16, temperature=0.8, seed=1234)
    alone = _alone(llama, PROMPTS[2], sampled)
    assert _tokens(alone) == _tokens(_alone(llama, PROMPTS[2], sampled))  # the same run twice: identical
    assert _tokens(alone) != _tokens(_alone(llama, PROMPTS[2], SamplingParams(max_tokens=16, temperature=0.8,
                                                                              seed=99)))
    others = [SamplingParams(max_tokens=20), SamplingParams(max_tokens=9, temperature=1.2, seed=5, top_k=20)]
    batch = _run(Engine(llama, keep_logits=True), [PROMPTS[0], PROMPTS[2], PROMPTS[4]],
                 [others[0], sampled, others[1]])[1]
    uniforms = torch.Generator().manual_seed(1234)
    clear, bound = 0, 2 * TOLERANCE / sampled.temperature
    one = torch.ones(1, dtype=torch.float64)
    for expected, got in zip(alone, batch, strict=True):
        assert expected.logits is not None and got.logits is not None
        assert float((expected.logits - got.logits).abs().max()) < TOLERANCE
        probs = filtered_probabilities(expected.logits[None].double(), one * 0.8, torch.zeros(1, dtype=torch.long),
                                       one, one * 0)[0]
        u = float(torch.rand((), generator=uniforms, dtype=torch.float64))
        if float((probs.cumsum(0) - u).abs().min()) > bound:
            assert got.token == expected.token
            clear += 1
        elif got.token != expected.token:
            break
    assert clear >= 12


def test_temperature_zero_and_top_k_one_equal_greedy(llama: Model) -> None:
    greedy = llama.generate(PROMPTS[2], max_tokens=12)
    assert llama.generate(PROMPTS[2], SamplingParams(max_tokens=12, temperature=0.0, seed=3)).tokens == greedy.tokens
    assert llama.generate(PROMPTS[2], SamplingParams(max_tokens=12, temperature=0.9, top_k=1, seed=3)).tokens \
        == greedy.tokens


def test_a_stop_string_across_tokens_ends_generation_and_is_never_streamed(llama: Model) -> None:
    pieces = [o.text for o in _run(Engine(llama), [PROMPTS[0]], SamplingParams(max_tokens=20))[0]]
    whole = "".join(pieces)
    # The last character of one piece and the whole next one: the stop string spans two tokens.
    j = next(j for j in range(3, len(pieces) - 1) if pieces[j] and pieces[j + 1])
    stop = pieces[j][-1] + pieces[j + 1]
    expected = whole[:whole.find(stop)]
    result = llama.generate(PROMPTS[0], SamplingParams(max_tokens=20, stop=(stop,)))
    assert (result.text, result.finish_reason) == (expected, "stop")
    assert "".join(llama.stream(PROMPTS[0], SamplingParams(max_tokens=20, stop=(stop,)))) == expected
    shown = []
    for output in llama.stream_batch([PROMPTS[0]], SamplingParams(max_tokens=20, stop=(stop,))):
        shown.append(output.text)
        assert expected.startswith("".join(shown))  # nothing shown is ever taken back


def test_max_tokens_and_the_context_end_generation_with_length(llama: Model) -> None:
    result = llama.generate(PROMPTS[0], max_tokens=7)
    assert (len(result.tokens), result.finish_reason, result.decode_steps) == (7, "length", 6)
    long = [PROMPTS[0][i % 20] for i in range(124)]
    result = llama.generate(long, max_tokens=50)
    assert (len(result.tokens), result.finish_reason) == (4, "length")  # 124 + 4 = the context of 128


def test_a_stop_token_ends_generation_without_being_returned(llama: Model) -> None:
    greedy = llama.generate(PROMPTS[2], max_tokens=12)
    stop_at = greedy.tokens[5]
    result = llama.generate(PROMPTS[2], SamplingParams(max_tokens=12, stop_token_ids=(stop_at,)))
    first = greedy.tokens.index(stop_at)
    assert (result.tokens, result.finish_reason) == (greedy.tokens[:first], "stop")


def test_batch_and_stream_apis_and_an_early_close(llama: Model) -> None:
    params = [SamplingParams(max_tokens=5), SamplingParams(max_tokens=8)]
    results = llama.generate_batch([PROMPTS[0], PROMPTS[3]], params)
    assert [len(r.tokens) for r in results] == [5, 8]
    for result, prompt, p in zip(results, [PROMPTS[0], PROMPTS[3]], params, strict=True):
        alone = _alone(llama, prompt, p)
        clear = _agree(_logits(alone), list(result.tokens))
        assert clear >= 0.8 * len(alone)
    stream = llama.stream_batch([PROMPTS[0], PROMPTS[3]], params)
    first = next(stream)
    with pytest.raises(ConfigError, match=r"the model's engine is busy with 2 requests"):
        llama.generate(PROMPTS[1])
    stream.close()  # abandoning a stream aborts what it left
    assert first.request_id in (0, 1) and not llama.engine.has_unfinished and llama.engine.cache.used_blocks == 0
    with pytest.raises(ConfigError, match="2 prompts but 1 SamplingParams"):
        llama.generate_batch([PROMPTS[0], PROMPTS[3]], params[:1])


def test_ignore_eos_runs_past_the_model_s_stop_token(llama: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    greedy = _tokens(_run(Engine(llama), [PROMPTS[2]], SamplingParams(max_tokens=12))[0])
    stop_at = greedy[5]
    monkeypatch.setattr(llama, "tokenizer", replace(llama.tokenizer, stop_ids=frozenset({stop_at})))  # as if eos
    stopped = _run(Engine(llama), [PROMPTS[2]], SamplingParams(max_tokens=12))[0]
    assert (_tokens(stopped), stopped[-1].finish_reason) == ([*greedy[:greedy.index(stop_at)], None], "stop")
    ignored = _run(Engine(llama), [PROMPTS[2]], SamplingParams(max_tokens=12, ignore_eos=True))[0]
    assert (_tokens(ignored), ignored[-1].finish_reason) == (greedy, "length")


@pytest.mark.parametrize("kernels", ["native", "generic"])
def test_every_layer_of_a_step_shares_one_gather_plan_and_one_rotary_table(
        llama: Model, kernels: str, tiny: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The step's block table, lengths and positions are the same tensors in every layer, so the backends'
    memos compute the paged-gather plan and the rotary tables once per step, not once per layer. The C
    kernels (cpu-native-*) read the block table directly and need no plan; without a compiler the generic
    backends take the calls."""
    import mistralrs_torch.generic._attention as attention
    import mistralrs_torch.generic._cpu_ops as cpu_ops
    import mistralrs_torch.generic._layers as layers

    counts = {"plan": 0, "tables": 0}

    def counted(name: str, function: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return function(*args, **kwargs)
        return call

    monkeypatch.setattr(attention, "paged_gather_plan", counted("plan", attention.paged_gather_plan))
    monkeypatch.setattr(layers, "rotary_tables", counted("tables", layers.rotary_tables))
    monkeypatch.setattr(cpu_ops, "rotary_tables", counted("tables", cpu_ops.rotary_tables))
    if kernels == "generic":
        monkeypatch.setenv("CC", "/nonexistent/cc")
        llama = load(tiny.save_folder(tiny.hf_model("llama"), tmp_path))
    assert llama.config.num_layers > 1
    engine = Engine(llama)
    for prompt in PROMPTS[:3]:
        engine.add(prompt, SamplingParams(max_tokens=6))
    steps = 0
    while engine.has_unfinished:
        engine.step()
        steps += 1
    chosen = {b.op: b.chosen for b in llama.runtime.bindings}
    assert chosen["paged_attention"] == ("cpu-native-attention" if kernels == "native" else "cpu-attention")
    assert chosen["rotary_embedding"] == ("cpu-native-layers" if kernels == "native" else "cpu-layers")
    # 1 prefill step + 5 decode steps
    assert (steps, counts) == (6, {"plan": 5 if kernels == "generic" else 0, "tables": 6})
