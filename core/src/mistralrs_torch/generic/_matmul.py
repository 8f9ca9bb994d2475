"""Reference matmul on the CPU: torch linear, and dequantize-then-linear for the quantized ops."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mistralrs_torch.generic._base import TORCH_DTYPES, TorchBackend
from mistralrs_torch.ops import CallSpec, PreparedWeight, QuantizedWeight

__all__ = ["GenericMatmul", "TorchMatmul", "dequantize_int8"]


def dequantize_int8(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """int8 (out, in) weight with a float scale per output channel -> dense weight of ``dtype``."""
    return weight.to(dtype) * scale.to(dtype)[:, None]


class TorchMatmul(TorchBackend):
    """Linear, weight-only int8 and group-wise quantized linear in plain torch on one device type.

    The quantized weight is kept as prepared (codes, scales, offsets on the device) and dequantized on
    every call: the reference path every faster backend is measured against, not a fast one.
    """

    # torch's own function, not a wrapper: the runtime calls it with no extra Python frame.
    linear = staticmethod(F.linear)

    def int8_linear(self, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(x, dequantize_int8(weight, scale, x.dtype), bias)

    def prepare_quantized(self, weight: QuantizedWeight, call: CallSpec, device: str) -> QuantizedWeight:
        return QuantizedWeight(weight.codes.to(device), weight.scales.to(device),
                               None if weight.offsets is None else weight.offsets.to(device),
                               weight.bits, weight.group_size)

    def quantized_linear(self, x: torch.Tensor, weight: PreparedWeight,
                         bias: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(x, weight.payload.dequantize(x.dtype), bias)


class GenericMatmul(TorchMatmul):
    """The generic CPU matmul backend."""

    def __init__(self) -> None:
        super().__init__("cpu-matmul", "cpu", -1000, "cpu", TORCH_DTYPES)
