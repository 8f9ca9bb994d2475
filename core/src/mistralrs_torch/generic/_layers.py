"""RMSNorm and rotary embedding in plain torch, as transformers' Llama computes them."""

from __future__ import annotations

import torch

from mistralrs_torch.generic._base import TORCH_DTYPES, TorchBackend
from mistralrs_torch.ops import TensorMemo


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x ** 2) + eps) in float32 (float64 stays float64), cast back, times weight."""
    compute = x if x.dtype == torch.float64 else x.float()
    normed = compute * torch.rsqrt(compute.pow(2).mean(-1, keepdim=True) + eps)
    return weight.to(x.dtype) * normed.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary_tables(positions: torch.Tensor, inv_freq: torch.Tensor,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (batch, 1, seq, head) of the angles positions * inv_freq, computed in float32, cast to dtype."""
    angles = positions.float()[..., None] * inv_freq.float()  # (batch, seq, head / 2)
    emb = torch.cat((angles, angles), dim=-1)[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotary_embedding(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, *,
                     memo: TensorMemo | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half rotary embedding; ``memo`` keeps the tables of positions every layer of a step shares."""
    if memo is None:
        cos, sin = rotary_tables(positions, inv_freq, q.dtype)
    else:
        cos, sin = memo.get((positions, inv_freq), q.dtype, lambda: rotary_tables(positions, inv_freq, q.dtype))
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


class TorchLayers(TorchBackend):
    """RMSNorm and rotary embedding in plain torch on one device type."""

    rms_norm = staticmethod(rms_norm)

    def rotary_embedding(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                         inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        memo = self.__dict__.get("_tables")
        if memo is None:
            memo = self.__dict__["_tables"] = TensorMemo()
        return rotary_embedding(q, k, positions, inv_freq, memo=memo)


class GenericLayers(TorchLayers):
    """The generic CPU layers backend."""

    def __init__(self) -> None:
        super().__init__("cpu-layers", "cpu", -1000, "cpu", TORCH_DTYPES)
