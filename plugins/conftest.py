"""Fixtures shared by the NVIDIA plugins' tests (cuda, flash-attn)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def cudnn_flags() -> Iterator[None]:
    """Binding cuda, cudnn or flash-attn sets torch's cuDNN flags process-wide; put them back after the test."""
    import torch  # only for the tests that ask: the light-import tests must not see torch imported

    saved = (torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark, torch.backends.cuda.cudnn_sdp_enabled())
    yield
    torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark = saved[:2]
    torch.backends.cuda.enable_cudnn_sdp(saved[2])
