"""Group-wise 4-bit linear on NVIDIA GPUs through torch's tinygemm int4 kernel (``_weight_int4pack_mm``).

The kernel takes bfloat16 activations on compute capability 8.0 and newer; the
weight is packed once at prepare time: two codes per byte ([out][in / 2],
high nibble first), then torch's tile layout, with one (scale, zero) pair per
group and output channel; it computes x @ ((codes - 8) * scale + zero).T.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mistralrs_torch.generic import TorchBackend
from mistralrs_torch.ops import CallSpec, PreparedWeight, QuantizedWeight, Support
from mistralrs_torch.system import FactsOnFirstUse
from mistralrs_torch_cuda._facts import CudaFacts

#: Above cuda-matmul (100), whose quantized path dequantizes the whole weight on every call.
CUDA_INT4_PRIORITY = 150
_GROUP_SIZES = (32, 64, 128, 256)


def _inner_k_tiles(in_features: int) -> int:
    # The kernel reads K in tiles of 16 x innerKTiles; the widest tiling the input features allow.
    return next(tiles for tiles in (8, 4, 2) if in_features % (16 * tiles) == 0)


class CudaInt4Matmul(FactsOnFirstUse, TorchBackend):
    """quantized_linear for 4-bit weights with bfloat16 activations on an Ampere or newer NVIDIA GPU."""

    linear = None
    int8_linear = None

    def __init__(self, facts: CudaFacts | None = None) -> None:
        super().__init__("cuda-int4", "cuda", CUDA_INT4_PRIORITY, "cuda", ("bfloat16",))
        self._facts = facts

    def facts_from_torch(self) -> CudaFacts:
        return CudaFacts.from_torch()

    def supports(self, call: CallSpec) -> Support:
        general = super().supports(call)
        if not general.ok:
            return Support(False, general.reason + " (torch's int4 GPU kernel takes bfloat16 activations)")
        if self.facts.capability is not None and self.facts.capability < (8, 0):
            major, minor = self.facts.capability
            return Support(False, f"torch's int4 GPU kernel needs compute capability 8.0 or newer; this GPU has "
                                  f"{major}.{minor}")
        if call.bits != 4:
            return Support(False, f"torch's int4 GPU kernel takes 4-bit weights, not {call.bits}-bit")
        if call.group_size not in _GROUP_SIZES:
            return Support(False, f"group size {call.group_size} is not one of "
                                  f"{', '.join(map(str, _GROUP_SIZES))} (torch's int4 GPU kernel)")
        if call.in_features % 32:
            return Support(False, f"{call.in_features} input features are not a multiple of 32 (the kernel's K tile)")
        return Support(True)

    def prepare_quantized(self, weight: QuantizedWeight, call: CallSpec, device: str) -> tuple[torch.Tensor, ...]:
        out_features = weight.shape[0]
        codes, scales = weight.codes, weight.scales.float()
        zeros = torch.zeros_like(scales) if weight.offsets is None else weight.offsets.float() + 8 * scales
        if out_features % 8:
            # The kernel tiles output channels by 8: pad with zero weights, and slice the output back.
            rows = (0, 0, 0, 8 - out_features % 8)
            codes, scales, zeros = F.pad(codes, rows, value=8), F.pad(scales, rows), F.pad(zeros, rows)
        nibbles = codes.to(device=device, dtype=torch.int32)
        packed_bytes = ((nibbles[:, ::2] << 4) | nibbles[:, 1::2]).to(torch.uint8)
        packed = torch.ops.aten._convert_weight_to_int4pack(packed_bytes, _inner_k_tiles(weight.shape[1]))
        scales_and_zeros = torch.stack([scales, zeros], dim=-1).transpose(0, 1).contiguous()
        return packed, scales_and_zeros.to(device=device, dtype=torch.bfloat16), torch.tensor(out_features)

    def quantized_linear(self, x: torch.Tensor, weight: PreparedWeight,
                         bias: torch.Tensor | None = None) -> torch.Tensor:
        packed, scales_and_zeros, out_features = weight.payload
        rows = x.reshape(-1, x.shape[-1])
        out = torch.ops.aten._weight_int4pack_mm(rows, packed, weight.call.group_size, scales_and_zeros)
        out = out[:, : int(out_features)].reshape(*x.shape[:-1], -1)
        return out if bias is None else out + bias
