"""mistralrs-mkl: Intel MKL for CPU matmul (feature mkl)."""

from mistralrs_mkl._manifest import MKL

__all__ = ["MKL"]
