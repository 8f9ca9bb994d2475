"""The mkl matmul backend: torch's MKL GEMM for dense linear, torch's int8 weight kernel for int8 linear."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

import torch
import torch.nn.functional as F

from mistralrs_torch.generic import dequantize_int8
from mistralrs_torch.ops import CallSpec, Support
from mistralrs_torch.system import blas_info
from mistralrs_torch_mkl._threads import configure_threads

_LINEAR = ("float32", "float64", "bfloat16")
_INT8 = ("float32", "bfloat16", "float16")


def float32_pays(rows: int, weight_elements: int) -> bool:
    """Whether emulated bfloat16 linear is faster through float32 for ``rows`` activation rows.

    Emulated bfloat16 GEMM costs every row a pass over the weight; the float32 route costs one conversion of
    the weight (slower per element the bigger the weight) and then a fast sgemm. Measured crossovers
    (benchmarks/cpu_gemm.py, bfloat16 by rows): 2 to 4 rows for a 576x576 to 1536x576 weight, about 24 for
    SmolLM2's 49152x576 lm_head, whose conversion alone takes about 100 ms.
    """
    return rows >= 4 + weight_elements // (1 << 20)


def _bf16_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    if not float32_pays(x.numel() // max(1, x.shape[-1]), weight.numel()):
        return F.linear(x, weight, bias)
    out = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    return out.to(torch.bfloat16)


def _int8_linear_dequantised(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                             bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, dequantize_int8(weight, scale, x.dtype), bias)


class MKLMatmul:
    """Dense and weight-only int8 linear on the CPU through MKL (and oneDNN for bfloat16).

    It proves at construction that torch's BLAS is MKL; if not, it refuses every
    call with that reason, so the runtime's fallback to the generic backend is
    visible rather than silent.
    """

    name = "mkl-matmul"
    feature = "mkl"
    dispatch_priority = 100

    def __init__(self, environ: Mapping[str, str], cpu_flags: Collection[str] = ()) -> None:
        self.blas = blas_info()
        # Without AVX512-BF16 or AMX, bfloat16 GEMM is emulated and about 4x slower than fp32 MKL GEMM
        # (benchmarks/cpu_gemm.py), so bfloat16 linear runs in fp32 and rounds once at the end, from the row
        # count where converting the weight pays (float32_pays).
        self.native_bf16 = bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags))
        self.threads, self.threads_from = configure_threads(environ)
        self._refusal = "" if self.blas.is_mkl else (
            f"torch's BLAS is {self.blas.blas}, not MKL: MKL not found: install Intel oneAPI or standalone MKL, "
            "with a torch built with MKL")

    def supports(self, call: CallSpec) -> Support:
        if self._refusal:
            return Support(False, self._refusal)
        if call.device != "cpu":
            return Support(False, f"runs on the CPU only, not {call.device}")
        if call.op == "int8_linear":
            if call.dtype not in _INT8:
                return Support(False, f"int8 linear takes activations of {', '.join(_INT8)}, not {call.dtype}")
            in_features = call.in_features
            # torch's int8 kernel crashes or returns wrong sums for bfloat16 when K is not a multiple of 8.
            if call.dtype == "bfloat16" and in_features % 8:
                return Support(False, f"bfloat16 int8 linear needs in_features divisible by 8, got {in_features}")
            return Support(True)
        if call.dtype not in _LINEAR:
            return Support(False, f"linear takes {', '.join(_LINEAR)}, not {call.dtype}")
        return Support(True)

    # torch's own function: fp32/fp64 GEMM is MKL's (BLAS_INFO=mkl), native bfloat16 goes through oneDNN.
    linear = staticmethod(F.linear)

    def kernel_for(self, call: CallSpec) -> Callable[..., torch.Tensor] | None:
        if call.op == "linear" and call.dtype == "bfloat16" and not self.native_bf16:
            return _bf16_linear
        if call.op == "int8_linear" and call.dtype != "bfloat16":
            # torch's int8 weight kernel beats dequantise + GEMM only for bfloat16 activations; for fp32 it is
            # about 6x slower than dequantising once and running MKL's sgemm (benchmarks/cpu_gemm.py).
            return _int8_linear_dequantised
        return None

    def int8_linear(self, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        out = torch._weight_int8pack_mm(rows, weight.contiguous(), scale.to(x.dtype))
        out = out.reshape(*x.shape[:-1], weight.shape[0])
        return out if bias is None else out + bias
