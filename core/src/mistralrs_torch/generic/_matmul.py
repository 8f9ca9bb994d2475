"""Reference matmul on the CPU: torch linear, and dequantize-then-linear for weight-only int8."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mistralrs_torch.generic._base import TORCH_DTYPES, TorchBackend

__all__ = ["GenericMatmul", "TorchMatmul", "dequantize_int8"]


def dequantize_int8(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """int8 (out, in) weight with a float scale per output channel -> dense weight of ``dtype``."""
    return weight.to(dtype) * scale.to(dtype)[:, None]


class TorchMatmul(TorchBackend):
    """Linear and weight-only int8 linear in plain torch on one device type (int8 by dequantising)."""

    # torch's own function, not a wrapper: the runtime calls it with no extra Python frame.
    linear = staticmethod(F.linear)

    def int8_linear(self, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(x, dequantize_int8(weight, scale, x.dtype), bias)


class GenericMatmul(TorchMatmul):
    """The generic CPU matmul backend."""

    def __init__(self) -> None:
        super().__init__("generic-matmul", "cpu", -1000, "cpu", TORCH_DTYPES)
