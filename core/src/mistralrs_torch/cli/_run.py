"""``mistralrs run -m PATH``: generate from a local model (Hugging Face folder or GGUF file), greedy or sampled.

With ``--prompt`` one user message goes through the model's chat template
(``--raw`` sends it as is) and the answer streams to stdout, then the speeds
go to stderr; ``--json`` prints one result object instead. Without
``--prompt`` on a terminal it is an interactive chat. The model runner is
imported only when the command runs, so other commands stay light.

Launched as one rank of a job (`mistralrs launch -n 2 --backend ring -- mistralrs
run ...`, or one RING_CONFIG per process), each rank loads its share of the
model and runs every step; only rank 0 prints the answer and the speeds.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from mistralrs_torch.cli._options import dtype_option, features_option, model_option, selection_option

if TYPE_CHECKING:
    from mistralrs_torch.models import Generation, Model, SamplingParams

RUN_SCHEMA = "mistralrs.run/1"


def _stats(result: Generation) -> str:
    return (f"prompt {result.prompt_tokens} tokens, {result.prefill_tokens_per_second:.1f} tokens/s prefill; "
            f"{len(result.tokens)} generated, {result.decode_tokens_per_second:.1f} tokens/s decode "
            f"({result.finish_reason})")


def _explain(model: Model) -> str:
    tuner = model.runtime.tuner
    measured = [] if tuner is None else ["measured selection:", *(f"  {m.describe()}" for m in tuner.measurements)]
    return "\n".join(["backends that ran:", *(f"  {b.describe()}" for b in model.runtime.bindings), *measured])


def _ids(model: Model, messages: list[dict[str, str]], raw: bool) -> list[int]:
    return model.tokenizer.encode(messages[-1]["content"]) if raw else model.tokenizer.encode_chat(messages)


def _chat(model: Model, params: SamplingParams, raw: bool, explain: bool) -> None:
    """Turn by turn until end of input or /exit; each turn re-reads the whole conversation."""
    click.echo("chat with the model: an empty line is skipped, /exit or Ctrl-D ends", err=True)
    messages: list[dict[str, str]] = []
    while True:
        try:
            line = input("> ")
        except EOFError:
            click.echo(err=True)
            break
        if line.strip() == "/exit":
            break
        if not line.strip():
            continue
        messages = [{"role": "user", "content": line}] if raw else [*messages, {"role": "user", "content": line}]
        result = model.generate(_ids(model, messages, raw), params, on_text=lambda piece: click.echo(piece, nl=False))
        click.echo()
        click.echo(_stats(result), err=True)
        messages.append({"role": "assistant", "content": result.text})
    if explain:
        click.echo(_explain(model), err=True)


def _result_json(model: Model, result: Generation, dtype: str) -> dict[str, Any]:
    return {"schema": RUN_SCHEMA, "model": str(model.path), "architecture": model.config.architecture,
            "dtype": dtype, "text": result.text, "prompt_tokens": result.prompt_tokens,
            "completion_tokens": len(result.tokens), "finish_reason": result.finish_reason,
            "prefill_seconds": result.prefill_seconds, "decode_seconds": result.decode_seconds,
            "prefill_tokens_per_second": result.prefill_tokens_per_second,
            "decode_tokens_per_second": result.decode_tokens_per_second,
            "active_features": list(model.runtime.resolution.active),
            "backends": [{"op": b.op, "backend": b.chosen, "call": b.describe(), "fallback": b.is_fallback}
                         for b in model.runtime.bindings]}


@click.command("run")
@model_option
@click.option("--prompt", default=None, help="One user message (through the chat template unless --raw). "
                                             "Without it, on a terminal: an interactive chat.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="Most tokens to generate.")
@features_option
@dtype_option
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Sampling temperature; 0 is greedy (the most likely token every time).")
@click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True,
              help="Sample among the k most likely tokens only; 0 is off.")
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0, show_default=True,
              help="Sample among the most likely tokens holding this much probability; 1 is off.")
@click.option("--min-p", type=click.FloatRange(min=0, max=1), default=0.0, show_default=True,
              help="Drop tokens less likely than this fraction of the most likely one; 0 is off.")
@click.option("--repetition-penalty", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Above 1 discourages tokens already in the text (transformers' penalty); 1 is off.")
@click.option("--seed", type=click.IntRange(min=0, max=2**64 - 1), default=None,
              help="Seed of the sampling: the same seed gives the same text [default: a fresh one each run].")
@click.option("--stop", "stops", multiple=True, metavar="TEXT",
              help="Stop where this text appears (not printed); repeat for several.")
@click.option("--kv-cache-blocks", type=click.IntRange(min=1), default=None,
              help="KV cache size in blocks of 16 tokens [default: at most 1 GiB].")
@click.option("--kv-cache-memory", type=click.FloatRange(min=0, min_open=True), default=None, metavar="GIB",
              help="KV cache size in GiB (instead of --kv-cache-blocks).")
@selection_option
@click.option("--raw", is_flag=True, help="Send the prompt as is, without the chat template.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON result (schema mistralrs.run/1) instead of "
                                                      "streaming text.")
@click.option("--explain", is_flag=True, help="Also print which backend ran each op.")
def run_command(path: str, prompt: str | None, max_tokens: int, features: str | None, dtype: str | None,
                temperature: float, top_k: int, top_p: float, min_p: float, repetition_penalty: float,
                seed: int | None, stops: tuple[str, ...], kv_cache_blocks: int | None, kv_cache_memory: float | None,
                selection: str | None, raw: bool, as_json: bool, explain: bool) -> None:
    """Generate text with a local model through the bound backends (greedy unless --temperature is above 0).

    Example: mistralrs run -m SmolLM2-135M-Instruct.Q4_1.gguf --prompt "What is the capital of France?"
    """
    if prompt is None and not sys.stdin.isatty():
        raise click.UsageError("no --prompt and no terminal for an interactive chat: pass --prompt TEXT")
    if prompt is None and as_json:
        raise click.UsageError("--json prints one result, so it needs --prompt TEXT")
    if kv_cache_blocks is not None and kv_cache_memory is not None:
        raise click.UsageError("--kv-cache-blocks and --kv-cache-memory both size the KV cache: give one")
    from mistralrs_torch._errors import InputError
    from mistralrs_torch.models import SamplingParams, load
    from mistralrs_torch.runtime import Runtime

    try:
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                min_p=min_p, repetition_penalty=repetition_penalty, seed=seed, stop=stops)
    except InputError as exc:  # what click's types cannot say (an empty --stop): a usage error all the same
        raise click.UsageError(str(exc)) from None
    runtime = Runtime.create(features, paged_attention=True, selection=selection)
    communicator = runtime.communicator()  # a rank of a job joins it here, before the model is read
    if prompt is None and communicator.world_size > 1:
        raise click.UsageError(f"this is rank {communicator.rank} of {communicator.world_size}: the interactive chat "
                               "runs in one process; pass --prompt TEXT to every rank")
    model = load(path, runtime=runtime, dtype=dtype)
    model.set_kv_cache(blocks=kv_cache_blocks, memory_gib=kv_cache_memory)
    if prompt is None:
        _chat(model, params, raw, explain)
        return
    ids = _ids(model, [{"role": "user", "content": prompt}], raw)
    leader = communicator.rank == 0  # every rank computes each token; one prints
    if as_json:
        result = model.generate(ids, params)
        if leader:
            click.echo(json.dumps(_result_json(model, result, str(model.dtype).removeprefix("torch.")), indent=2))
        return
    result = model.generate(ids, params, on_text=(lambda piece: click.echo(piece, nl=False)) if leader else None)
    if not leader:
        return
    click.echo()
    click.echo(_stats(result), err=True)
    if explain:
        click.echo(_explain(model), err=True)
