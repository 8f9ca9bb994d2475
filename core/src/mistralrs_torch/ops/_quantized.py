"""Group-wise weight-only quantized weights: the one format every quantized linear backend starts from.

A weight of shape (out, in) is stored as integer codes with one scale (and, when
asymmetric, one offset) per group of ``group_size`` consecutive input columns:

- symmetric:  w[o, i] = scales[o, i // group_size] * (codes[o, i] - 2 ** (bits - 1))
- asymmetric: w[o, i] = scales[o, i // group_size] * codes[o, i] + offsets[o, i // group_size]

GGUF's blocks map onto it exactly: Q8_0 is symmetric 8-bit (codes = q + 128),
Q4_0 symmetric 4-bit (codes = q), Q4_1 asymmetric 4-bit (offset = the block's
min), each with group size 32. Backends never take this form per call: they
prepare it once at load into their own layout (see the op contract).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from mistralrs_torch.ops._contract import CallSpec


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """Codes (out, in) uint8 in [0, 2**bits); scales and offsets (out, in // group_size) float32."""

    codes: torch.Tensor
    scales: torch.Tensor
    offsets: torch.Tensor | None
    bits: int
    group_size: int

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.codes.shape[0]), int(self.codes.shape[1]))

    @property
    def symmetric(self) -> bool:
        return self.offsets is None

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The float weight (out, in), computed in float32 and then cast to ``dtype``."""
        out, in_features = self.shape
        groups = in_features // self.group_size
        codes = self.codes.reshape(out, groups, self.group_size).float()
        scales = self.scales.float().unsqueeze(-1)
        weight: torch.Tensor
        if self.offsets is None:
            weight = scales * (codes - 2 ** (self.bits - 1))
        else:
            weight = scales * codes + self.offsets.float().unsqueeze(-1)
        weight = weight.reshape(out, in_features)
        return weight if dtype is None else weight.to(dtype)


@dataclass(frozen=True, eq=False)
class PreparedWeight:
    """A QuantizedWeight prepared once, at load, by the backend that will run it.

    ``payload`` is the backend's own layout (packed nibbles, a kernel's tiles, or
    the codes as they are); ``call`` is the signature it was prepared for; only
    ``backend`` reads the payload.
    """

    backend: str
    payload: Any
    call: CallSpec
    shape: tuple[int, int]
