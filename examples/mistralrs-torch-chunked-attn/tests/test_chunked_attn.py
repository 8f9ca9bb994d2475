"""The example plugin passes the conformance kit, and chunking changes nothing but memory."""

from __future__ import annotations

import torch
from mistralrs_torch_chunked_attn._kernel import chunked_attention

from mistralrs_torch.generic import dense_attention


def test_conformance_kit(mistralrs_kit) -> None:
    mistralrs_kit("chunked_attn")


def test_small_chunks_give_the_dense_result() -> None:
    gen = torch.Generator().manual_seed(3)
    q, k, v = (
        torch.randn(1, 8, 5, 32, generator=gen),
        torch.randn(1, 2, 37, 32, generator=gen),
        torch.randn(1, 2, 37, 32, generator=gen),
    )
    for chunk in (1, 4, 36, 37, 100):
        torch.testing.assert_close(
            chunked_attention(q, k, v, causal=True, chunk=chunk),
            dense_attention(q, k, v, causal=True),
            rtol=1e-5,
            atol=1e-5,
        )
