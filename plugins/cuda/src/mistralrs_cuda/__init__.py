"""mistralrs-cuda: NVIDIA GPUs through CUDA (features cuda and cudnn)."""

from mistralrs_cuda._manifest import CUDA, CUDNN

__all__ = ["CUDA", "CUDNN"]
