"""The generic CPU backend: reference implementations of every op in plain torch."""

from mistralrs.generic._attention import GenericAttention, bottom_right_causal_mask, dense_attention, gather_paged_kv
from mistralrs.generic._collectives import SingleProcessCollectives, SingleProcessCommunicator
from mistralrs.generic._matmul import GenericMatmul, dequantize_int8

__all__ = [
    "GenericAttention",
    "GenericMatmul",
    "SingleProcessCollectives",
    "SingleProcessCommunicator",
    "bottom_right_causal_mask",
    "dense_attention",
    "dequantize_int8",
    "gather_paged_kv",
]
