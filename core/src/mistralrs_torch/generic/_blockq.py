"""Block-quantized linear on the CPU through this package's C kernel (_blockq.c), compiled at first use.

The weight stays as GGUF stores it, 4 or 8 bits a weight with a float32 scale
and offset per 32, and each call multiplies the activations in float32 against
the codes converted to float, block by block (AVX2), as exact as a dense float32
layer; half-precision activations are widened first and the result narrowed.
Calls of many rows (prefill) dequantize the weight into float32 and take
torch's matrix product instead. benchmarks/generate.py measures the whole model
and benchmarks/selection.py each signature against the other backends.

It refuses, with the reason, where it would be slow or cannot run: a CPU
without AVX2 and FMA (the plain C build is several times slower than torch's
kernels) and a machine without a C compiler (the reason names what to install);
cpu-int4pack or cpu-matmul then take the call.
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from mistralrs_torch.generic._base import TorchBackend
from mistralrs_torch.generic._native import NativeLibrary
from mistralrs_torch.ops import CallSpec, PreparedWeight, QuantizedWeight, Support

#: The kernel's block: group sizes must be multiples of it.
BLOCK = 32
#: Calls with at least this many rows dequantize into a float32 matrix product instead.
DEQUANTIZE_ROWS = 16
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def _bind(library: ctypes.CDLL) -> ctypes.CDLL:
    pointer, size, flag = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    library.blockq_linear.argtypes = [pointer, flag, pointer, pointer, size, size, pointer, size, pointer, flag]
    library.blockq_linear.restype = flag
    library.blockq_dequantize.argtypes = [pointer, flag, pointer, pointer, size, size, pointer]
    library.blockq_dequantize.restype = None
    library.blockq_vectorized.argtypes = []
    library.blockq_vectorized.restype = flag
    return library


class CpuBlockQuantMatmul(TorchBackend):
    """quantized_linear for 4- and 8-bit block-quantized weights on the CPU through a C kernel."""

    linear = None
    int8_linear = None

    def __init__(self) -> None:
        super().__init__("cpu-blockq", "cpu", -850, "cpu", ("float32", "bfloat16", "float16"))
        self._native = NativeLibrary("_blockq.c", _bind, refuse=lambda library: "" if library.blockq_vectorized() else (
            "this CPU has no AVX2 and FMA: the kernel's plain C build is several times slower than torch's kernels, "
            "which take the call"))

    def supports(self, call: CallSpec) -> Support:
        general = super().supports(call)
        if not general.ok:
            return Support(False, general.reason + " (the kernel computes in float32; cpu-matmul takes float64)")
        if call.bits not in (4, 8):
            return Support(False, f"the block kernel takes 4- or 8-bit weights, not {call.bits}-bit")
        if call.group_size % BLOCK or call.in_features % BLOCK:
            return Support(False, f"group size {call.group_size} and in features {call.in_features} must be "
                                  f"multiples of {BLOCK} (the kernel's block)")
        if self._native.get() is None:
            return Support(False, self._native.reason)
        return Support(True)

    def prepare_quantized(self, weight: QuantizedWeight, call: CallSpec,
                          device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int, int, int]:
        out_features, in_features = weight.shape
        repeat = weight.group_size // BLOCK
        scales = weight.scales.float().repeat_interleave(repeat, dim=1)
        offsets = (torch.zeros_like(scales) if weight.offsets is None
                   else weight.offsets.float().repeat_interleave(repeat, dim=1))
        codes = weight.codes.to(torch.int16)
        if weight.symmetric:  # scale * (code - 2 ** (bits - 1)) = scale * code + offset
            offsets = offsets - 2 ** (weight.bits - 1) * scales
        if weight.bits == 4:
            # Byte i of a block: code i in the low nibble, code 16 + i in the high one (GGUF's Q4 layout).
            halves = codes.reshape(out_features, in_features // BLOCK, 2, BLOCK // 2)
            packed = (halves[:, :, 0] | (halves[:, :, 1] << 4)).to(torch.uint8).reshape(out_features, -1)
        else:  # signed codes: scale * code + offset = scale * (code - 128) + (offset + 128 * scale)
            packed = (codes - 128).to(torch.int8).view(torch.uint8)
            offsets = offsets + 128 * scales
        codes_, scales_, offsets_ = (t.contiguous().to(device) for t in (packed, scales, offsets))
        # The payload keeps the tensors alive; their addresses, taken once, save the hot path three calls.
        return codes_, scales_, offsets_, weight.bits, codes_.data_ptr(), scales_.data_ptr(), offsets_.data_ptr()

    def quantized_linear(self, x: torch.Tensor, weight: PreparedWeight,
                         bias: torch.Tensor | None = None) -> torch.Tensor:
        *_, bits, codes, scales, offsets = weight.payload
        library = self._native.loaded
        out_features, in_features = weight.shape
        rows = x if x.dim() == 2 and x.is_contiguous() else x.reshape(-1, in_features).contiguous()
        if rows.shape[0] >= DEQUANTIZE_ROWS:
            dense = torch.empty(out_features, in_features)
            library.blockq_dequantize(codes, bits, scales, offsets, out_features, in_features, dense.data_ptr())
            out = F.linear(rows.float(), dense).to(x.dtype)
        else:
            out = torch.empty(rows.shape[0], out_features, dtype=x.dtype)
            if library.blockq_linear(codes, bits, scales, offsets, out_features, in_features, rows.data_ptr(),
                                     rows.shape[0], out.data_ptr(), _DTYPE_CODES[x.dtype]):
                raise MemoryError(f"cpu-blockq could not allocate {rows.numel() * 4} bytes for the activations "
                                  "widened to float32: free memory or run fewer sequences at once")
        if x.dim() != 2:
            out = out.reshape(*x.shape[:-1], out_features)
        return out if bias is None else out + bias
