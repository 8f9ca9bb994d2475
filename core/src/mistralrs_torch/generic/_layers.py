"""RMSNorm and rotary embedding in plain torch, as transformers' Llama computes them."""

from __future__ import annotations

import torch

from mistralrs_torch.generic._base import TORCH_DTYPES, TorchBackend

__all__ = ["GenericLayers", "TorchLayers", "rms_norm", "rotary_embedding"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x ** 2) + eps) in float32 (float64 stays float64), cast back, times weight."""
    compute = x if x.dtype == torch.float64 else x.float()
    normed = compute * torch.rsqrt(compute.pow(2).mean(-1, keepdim=True) + eps)
    return weight.to(x.dtype) * normed.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary_embedding(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                     inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half rotary embedding; angles in float32, cos and sin cast to the inputs' dtype."""
    angles = positions.float()[..., None] * inv_freq.float()  # (batch, seq, head / 2)
    emb = torch.cat((angles, angles), dim=-1)[:, None]  # (batch, 1, seq, head)
    cos, sin = emb.cos().to(q.dtype), emb.sin().to(q.dtype)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


class TorchLayers(TorchBackend):
    """RMSNorm and rotary embedding in plain torch on one device type."""

    rms_norm = staticmethod(rms_norm)
    rotary_embedding = staticmethod(rotary_embedding)


class GenericLayers(TorchLayers):
    """The generic CPU layers backend."""

    def __init__(self) -> None:
        super().__init__("cpu-layers", "cpu", -1000, "cpu", TORCH_DTYPES)
