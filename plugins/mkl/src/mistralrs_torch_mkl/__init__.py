"""mistralrs-torch-mkl: Intel MKL for CPU matmul (feature mkl)."""

from mistralrs_torch_mkl._manifest import MKL

__all__ = ["MKL"]
