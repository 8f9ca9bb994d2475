"""The accelerate matmul backend: torch's GEMM where its BLAS is Apple Accelerate (macOS)."""

from __future__ import annotations

from mistralrs_torch.generic import TorchMatmul
from mistralrs_torch.ops import CallSpec, Support
from mistralrs_torch.system import blas_info


def is_accelerate(blas: str) -> bool:
    """Whether a torch BLAS_INFO names Apple's Accelerate (older builds call it vecLib)."""
    return blas.lower() in ("accelerate", "veclib")


class AccelerateMatmul(TorchMatmul):
    """fp32/fp64 linear on the CPU through Accelerate's GEMM; proves the BLAS first and refuses otherwise."""

    def __init__(self) -> None:
        super().__init__("accelerate-matmul", "accelerate", 100, "cpu", ("float32", "float64"))
        blas = blas_info().blas
        self._refusal = (
            ""
            if is_accelerate(blas)
            else (
                f"torch's BLAS is {blas}, not Apple Accelerate: "
                "install the macOS build of torch (pip install torch on macOS)"
            )
        )

    def supports(self, call: CallSpec) -> Support:
        if self._refusal:
            return Support(False, self._refusal)
        return super().supports(call)
