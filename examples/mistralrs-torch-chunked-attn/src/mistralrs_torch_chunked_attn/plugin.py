"""Entry point of mistralrs-torch-chunked-attn. Registering is not activating: no torch import here."""

from __future__ import annotations

from mistralrs_torch import AttentionBackend, FeatureManifest, hookimpl
from mistralrs_torch_chunked_attn._manifest import CHUNKED_ATTN


@hookimpl
def mistralrs_features() -> tuple[FeatureManifest, ...]:
    return (CHUNKED_ATTN,)


@hookimpl
def mistralrs_attention_backends(active: frozenset[str]) -> tuple[AttentionBackend, ...]:
    if CHUNKED_ATTN.name not in active:
        return ()
    from mistralrs_torch_chunked_attn._kernel import ChunkedAttention

    return (ChunkedAttention(),)
