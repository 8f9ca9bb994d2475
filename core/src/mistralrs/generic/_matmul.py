"""Reference matmul on the CPU: torch linear, and dequantize-then-linear for weight-only int8."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mistralrs.ops import CallSpec, Support

__all__ = ["GenericMatmul", "dequantize_int8"]

_DTYPES = ("float32", "float64", "bfloat16", "float16")


def dequantize_int8(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """int8 (out, in) weight with a float scale per output channel -> dense weight of ``dtype``."""
    return weight.to(dtype) * scale.to(dtype)[:, None]


class GenericMatmul:
    """The generic CPU matmul backend."""

    name = "generic-matmul"
    feature = "cpu"
    priority = -1000

    def supports(self, call: CallSpec) -> Support:
        if call.device != "cpu":
            return Support(False, f"runs on the CPU only, not {call.device}")
        if call.dtype not in _DTYPES:
            return Support(False, f"dtype {call.dtype} is not one of {', '.join(_DTYPES)}")
        return Support(True)

    # torch's own function, not a wrapper: the runtime calls it with no extra Python frame.
    linear = staticmethod(F.linear)

    def int8_linear(self, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(x, dequantize_int8(weight, scale, x.dtype), bias)
