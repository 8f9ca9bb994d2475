"""Matmul in plain torch: linear, weight-only int8 dequantized per call, group-wise quantized dequantized once."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mistralrs_torch.generic._base import TORCH_DTYPES, TorchBackend
from mistralrs_torch.ops import CallSpec, PreparedWeight, QuantizedWeight


def dequantize_int8(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """int8 (out, in) weight with a float scale per output channel -> dense weight of ``dtype``."""
    return weight.to(dtype) * scale.to(dtype)[:, None]


class TorchMatmul(TorchBackend):
    """Linear, weight-only int8 and group-wise quantized linear in plain torch on one device type.

    A group-wise quantized weight is dequantized once, when it is prepared, into a dense weight of the
    activations' dtype: as fast as a dense layer, and as large (4 bytes a weight for float32, 2 for
    bfloat16). Backends with packed kernels (cpu-int4pack, cuda-int4) keep it small.
    """

    # torch's own function, not a wrapper: the runtime calls it with no extra Python frame.
    linear = staticmethod(F.linear)

    def int8_linear(self, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(x, dequantize_int8(weight, scale, x.dtype), bias)

    def prepare_quantized(self, weight: QuantizedWeight, call: CallSpec, device: str) -> torch.Tensor:
        return weight.dequantize(getattr(torch, call.dtype)).to(device)

    def quantized_linear(self, x: torch.Tensor, weight: PreparedWeight,
                         bias: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(x, weight.payload, bias)


class GenericMatmul(TorchMatmul):
    """The generic CPU matmul backend."""

    def __init__(self) -> None:
        super().__init__("cpu-matmul", "cpu", -1000, "cpu", TORCH_DTYPES)
