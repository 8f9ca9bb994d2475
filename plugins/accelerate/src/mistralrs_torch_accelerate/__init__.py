"""mistralrs-torch-accelerate: Apple Accelerate for CPU matmul on macOS (feature accelerate)."""

from mistralrs_torch_accelerate._manifest import ACCELERATE

__all__ = ["ACCELERATE"]
