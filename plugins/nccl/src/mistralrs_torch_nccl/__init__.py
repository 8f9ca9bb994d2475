"""mistralrs-torch-nccl: multi-GPU collectives through NCCL (feature nccl)."""

from mistralrs_torch_nccl._manifest import NCCL

__all__ = ["NCCL"]
