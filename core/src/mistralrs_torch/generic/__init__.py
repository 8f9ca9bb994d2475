"""The generic CPU backend: reference implementations of every op in plain torch."""

from mistralrs_torch.generic._attention import (
    GenericAttention,
    TorchAttention,
    bottom_right_causal_mask,
    dense_attention,
    paged_attention,
    paged_gather_plan,
    write_kv_cache,
)
from mistralrs_torch.generic._base import TORCH_DTYPES, TorchBackend
from mistralrs_torch.generic._blockq import CpuBlockQuantMatmul
from mistralrs_torch.generic._collectives import SingleProcessCollectives, SingleProcessCommunicator
from mistralrs_torch.generic._cpu_ops import CpuNativeAttention, CpuNativeLayers
from mistralrs_torch.generic._int4 import TorchInt4Matmul
from mistralrs_torch.generic._layers import GenericLayers, TorchLayers, rms_norm, rotary_embedding
from mistralrs_torch.generic._matmul import GenericMatmul, TorchMatmul, dequantize_int8
from mistralrs_torch.generic._sdpa import sdpa_kernel_refusal

__all__ = [
    "TORCH_DTYPES",
    "CpuBlockQuantMatmul",
    "CpuNativeAttention",
    "CpuNativeLayers",
    "GenericAttention",
    "GenericLayers",
    "GenericMatmul",
    "SingleProcessCollectives",
    "SingleProcessCommunicator",
    "TorchAttention",
    "TorchBackend",
    "TorchInt4Matmul",
    "TorchLayers",
    "TorchMatmul",
    "bottom_right_causal_mask",
    "dense_attention",
    "dequantize_int8",
    "paged_attention",
    "paged_gather_plan",
    "rms_norm",
    "rotary_embedding",
    "sdpa_kernel_refusal",
    "write_kv_cache",
]
