"""``mistralrs serve -m PATH``: the OpenAI-compatible server (the extra ``mistralrs-torch[serve]``).

On a tensor-parallel job (``mistralrs launch -n 2 --backend ring -- mistralrs serve ...``, or one RING_CONFIG per
process) only rank 0 listens; the other ranks load their part of the model and follow rank 0's schedule. The
server and the model runner are imported only when the command runs, so other commands stay light.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from mistralrs_torch.cli._options import dtype_option, features_option, model_option, selection_option

EXTRA = "mistralrs-torch[serve]"


class _MissingExtra(click.ClickException):
    exit_code = 2

    def show(self, file: object = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def _check_extra() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise _MissingExtra(f"`mistralrs serve` needs {exc.name or 'starlette and uvicorn'}, which this environment "
                            f"lacks: install the extra with `pip install '{EXTRA}'` (or `uv sync` in this "
                            "repository, which installs it)") from None


@click.command("serve")
@model_option
@click.option("--served-model-name", default=None, metavar="NAME",
              help="The model id clients send and /v1/models lists [default: the file or folder name].")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface: then set --api-key).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on; 0 picks a free one (the address is printed).")
@click.option("--max-num-seqs", type=click.IntRange(min=1), default=256, show_default=True,
              help="Most requests in the running batch; more wait.")
@click.option("--kv-cache-blocks", type=click.IntRange(min=1), default=None,
              help="KV cache size in blocks of 16 tokens [default: max-num-seqs full contexts, at most 1 GiB].")
@click.option("--kv-cache-memory", type=click.FloatRange(min=0, min_open=True), default=None, metavar="GIB",
              help="KV cache size in GiB (instead of --kv-cache-blocks).")
@click.option("--api-key", default=None, metavar="KEY",
              help="Require 'Authorization: Bearer KEY' on every endpoint but /health [default: MISTRALRS_API_KEY].")
@features_option
@dtype_option
@selection_option
@click.option("--grace", type=click.FloatRange(min=0), default=10.0, show_default=True, metavar="SECONDS",
              help="On SIGTERM or SIGINT, how long requests in flight may run on before they are cancelled.")
def serve_command(path: str, served_model_name: str | None, host: str, port: int, max_num_seqs: int,
                  kv_cache_blocks: int | None, kv_cache_memory: float | None, api_key: str | None,
                  features: str | None, dtype: str | None, selection: str | None, grace: float) -> None:
    """Serve a local model over OpenAI's HTTP API (/v1/chat/completions, /v1/completions, /v1/models), with
    /health and Prometheus /metrics; requests are batched continuously over the paged KV cache.

    Example: mistralrs serve -m SmolLM2-135M-Instruct.Q4_1.gguf --port 8000
    """
    if kv_cache_blocks is not None and kv_cache_memory is not None:
        raise click.UsageError("--kv-cache-blocks and --kv-cache-memory both size the KV cache: give one")
    _check_extra()
    from mistralrs_torch.models import Engine, load
    from mistralrs_torch.runtime import Runtime
    from mistralrs_torch.serve import API_KEY_VAR, Server, Settings, follow

    runtime = Runtime.create(features, paged_attention=True, selection=selection)
    communicator = runtime.communicator()

    def engine() -> Engine:
        model = load(path, runtime=runtime, dtype=dtype)
        return Engine(model, kv_cache_blocks=kv_cache_blocks, kv_cache_memory=kv_cache_memory,
                      max_num_seqs=max_num_seqs)

    if communicator.rank != 0:  # a follower: no socket, rank 0's schedule until it stops (or dies)
        follow(engine(), communicator)
        return
    key = api_key if api_key is not None else (os.environ.get(API_KEY_VAR) or None)
    name = served_model_name or Path(path.rstrip("/\\")).name
    server = Server(engine, Settings(name, key), host=host, port=port, grace=grace)
    click.echo(f"mistralrs serve: {name} on {server.url} (loading; GET /health answers 200 once ready)", err=True)
    sys.exit(server.run())
