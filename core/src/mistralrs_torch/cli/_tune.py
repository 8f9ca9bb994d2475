"""``mistralrs tune -m PATH``: fill measured selection's tuning cache ahead of time with a model's real shapes.

Runs the model once per prompt-length bucket (powers of two up to
``--max-prompt-tokens``) and a few decode steps each, under
``selection="measured"``, so that later runs with MISTRALRS_SELECTION=measured
(or ``mistralrs run --selection measured``) start with every choice known.
The model runner is imported only when the command runs.
"""

from __future__ import annotations

import json

import click

from mistralrs_torch.cli._options import dtype_option, features_option, model_option

TUNE_SCHEMA = "mistralrs.tune/1"
#: Any text: only its token count matters (the kernels' timings do not depend on which tokens).
_FILLER = "The quick brown fox jumps over the lazy dog while the river runs to the sea. "


@click.command("tune")
@model_option
@click.option("--max-prompt-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="Tune prompts of 1, 2, 4, ... tokens up to this many (each power-of-two bucket once).")
@features_option
@dtype_option
@click.option("--cache", "cache", default=None, metavar="FILE",
              help="The tuning cache [default: MISTRALRS_TUNING_CACHE, else ~/.cache/mistralrs-torch/tuning.json].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON result (schema mistralrs.tune/1).")
def tune_command(path: str, max_prompt_tokens: int, features: str | None, dtype: str | None, cache: str | None,
                 as_json: bool) -> None:
    """Time every supporting backend on a model's real op calls and save the fastest correct ones.

    Example: mistralrs tune -m SmolLM2-135M-Instruct.Q4_1.gguf --max-prompt-tokens 128
    """
    from mistralrs_torch.models import load
    from mistralrs_torch.runtime import Runtime

    runtime = Runtime.create(features, paged_attention=True, selection="measured", tuning_cache=cache)
    model = load(path, runtime=runtime, dtype=dtype)
    tuner = runtime.tuner
    assert tuner is not None  # selection="measured" always has one
    limit = min(max_prompt_tokens, model.config.max_position_embeddings - 2)
    text = model.tokenizer.encode(_FILLER)
    lengths = sorted({min(1 << k, limit) for k in range(limit.bit_length() + 1)})
    for length in lengths:
        ids = (text * (length // len(text) + 1))[:length]
        model.generate(ids, max_tokens=2)  # the prompt's bucket, then one-token decode steps
    measured = [m for m in tuner.measurements if m.source == "measured"]
    reused = [m for m in tuner.measurements if m.source == "cache"]
    where = str(tuner.cache.path) if tuner.cache.path is not None else "(memory only)"
    if as_json:
        click.echo(json.dumps({"schema": TUNE_SCHEMA, "model": str(model.path), "cache": where,
                               "prompt_lengths": lengths, "seconds": tuner.seconds, "notes": tuner.cache.notes,
                               "choices": [{"op": m.op, "call": m.call.describe(), "winner": m.winner,
                                            "times": dict(m.times), "dropped": dict(m.dropped), "source": m.source}
                                           for m in tuner.measurements]}, indent=2))
        return
    for note in tuner.cache.notes:
        click.echo(f"note: {note}", err=True)
    for m in tuner.measurements:
        click.echo(m.describe())
    single = "every op has one supporting backend here, so there was nothing to time" if not tuner.measurements \
        else f"{len(measured)} signature(s) tuned in {tuner.seconds:.2f} s, {len(reused)} already in the cache"
    click.echo(f"{single}; prompts of {', '.join(map(str, lengths))} tokens; cache: {where}")
