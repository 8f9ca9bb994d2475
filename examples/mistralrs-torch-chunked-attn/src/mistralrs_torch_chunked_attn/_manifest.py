"""The chunked-attn feature manifest (data only: importing it loads no torch)."""

from __future__ import annotations

from mistralrs_torch import EnvVar, FeatureManifest

__all__ = ["CHUNKED_ATTN"]

CHUNKED_ATTN = FeatureManifest(
    name="chunked-attn",
    summary="Memory-bounded chunked attention on the CPU",
    distribution="mistralrs-torch-chunked-attn",
    selection_priority=10,
    provides=("attention",),
    env_vars=(EnvVar("MISTRALRS_CHUNKED_ATTN_CHUNK", "keys per chunk (default 1024)"),),
    recommended_for=("generic-cpu", "intel-cpu"),
)
