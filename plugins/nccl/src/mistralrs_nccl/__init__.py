"""mistralrs-nccl: multi-GPU collectives through NCCL (feature nccl)."""

from mistralrs_nccl._manifest import NCCL

__all__ = ["NCCL"]
