"""mistralrs-accelerate: Apple Accelerate for CPU matmul on macOS (feature accelerate)."""

from mistralrs_accelerate._manifest import ACCELERATE

__all__ = ["ACCELERATE"]
