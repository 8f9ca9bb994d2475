"""mistralrs-torch-cuda: NVIDIA GPUs through CUDA (features cuda and cudnn)."""

from mistralrs_torch_cuda._manifest import CUDA, CUDNN

__all__ = ["CUDA", "CUDNN"]
