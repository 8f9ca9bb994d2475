"""Group-wise 4-bit linear through torch's packed int4 CPU kernel (``_weight_int4pack_mm_for_cpu``).

The weight is packed once, at prepare time, into the kernel's layout (two codes
per byte, tiled), with one (scale, zero) pair per group and output channel; the
kernel computes x @ ((codes - 8) * scale + zero).T. torch vectorises it for
bfloat16 activations only: on this project's CI-class CPU (1 thread, one token)
a 1536 x 576 weight took 0.18 ms in bfloat16 against 8 ms in float32, where
dequantizing once at load (cpu-matmul, 0.12 ms) is the better path; so this
backend takes bfloat16 calls and refuses the others with that reason.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mistralrs_torch.generic._base import TorchBackend
from mistralrs_torch.ops import CallSpec, PreparedWeight, QuantizedWeight, Support

#: Group sizes the kernel takes.
GROUP_SIZES = (32, 64, 128, 256)


class TorchInt4Matmul(TorchBackend):
    """quantized_linear for 4-bit weights on the CPU through torch's packed int4 kernel."""

    linear = None
    int8_linear = None

    def __init__(self) -> None:
        super().__init__("cpu-int4pack", "cpu", -900, "cpu", ("bfloat16",))

    def supports(self, call: CallSpec) -> Support:
        general = super().supports(call)
        if not general.ok:
            return Support(False, general.reason + " (torch vectorises its int4 CPU kernel for bfloat16 only; "
                                                   "cpu-matmul dequantizes the weight once for other dtypes)")
        if call.bits != 4:
            return Support(False, f"torch's packed int4 kernel takes 4-bit weights, not {call.bits}-bit")
        if call.group_size not in GROUP_SIZES:
            return Support(False, f"group size {call.group_size} is not one of {', '.join(map(str, GROUP_SIZES))} "
                                  "(torch's packed int4 kernel)")
        return Support(True)

    def prepare_quantized(self, weight: QuantizedWeight, call: CallSpec, device: str) -> tuple[torch.Tensor, ...]:
        out_features = weight.shape[0]
        if out_features % 16:
            # The kernel tiles output channels by 16: pad with zero weights, and slice the output back.
            padding = 16 - out_features % 16
            rows = (0, 0, 0, padding)
            weight = QuantizedWeight(F.pad(weight.codes, rows, value=8), F.pad(weight.scales, rows),
                                     None if weight.offsets is None else F.pad(weight.offsets, rows),
                                     weight.bits, weight.group_size)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(weight.codes.to(torch.int32), 1)
        scales = weight.scales.float()
        # Ours: w = scale * code + offset (asymmetric) or scale * (code - 8); the kernel's: (code - 8) * scale + zero.
        zeros = torch.zeros_like(scales) if weight.offsets is None else weight.offsets.float() + 8 * scales
        scales_and_zeros = torch.stack([scales, zeros], dim=-1).transpose(0, 1).contiguous()
        dtype = getattr(torch, call.dtype)
        return packed.to(device), scales_and_zeros.to(device=device, dtype=dtype), torch.tensor(out_features)

    def quantized_linear(self, x: torch.Tensor, weight: PreparedWeight,
                         bias: torch.Tensor | None = None) -> torch.Tensor:
        packed, scales_and_zeros, out_features = weight.payload
        rows = x.reshape(-1, x.shape[-1])
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, packed, weight.call.group_size, scales_and_zeros)
        out = out[:, : int(out_features)].reshape(*x.shape[:-1], -1)
        return out if bias is None else out + bias
