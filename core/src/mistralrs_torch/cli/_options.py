"""Options shared by several commands, defined once so their names, types and help stay the same everywhere."""

from __future__ import annotations

import click

features_option = click.option(
    "--features", default=None, metavar="FEATURES",
    help="Explicit selection: feature names as `plugins list` shows them, space-separated ('auto' or 'none' also "
         "work); overrides MISTRALRS_FEATURES.")
model_option = click.option(
    "-m", "--model", "path", required=True, metavar="PATH",
    help="A local Hugging Face model folder (config.json, safetensors, tokenizer.json) or a .gguf file.")
selection_option = click.option(
    "--selection", type=click.Choice(["priority", "measured"]), default=None,
    help="How each op's backend is chosen: the first supporting one in dispatch priority, or the fastest correct "
         "one timed on this machine (cached; see `mistralrs tune`) [default: MISTRALRS_SELECTION, else priority].")
dtype_option = click.option(
    "--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
    help="Activations and dense weights [default: float32 on the CPU, bfloat16 elsewhere]; quantized weights stay "
         "quantized.")
