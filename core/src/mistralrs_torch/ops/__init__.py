"""The op contract backends implement: devices, the op registry, attention, matmul, layers, collectives."""

from mistralrs_torch.ops._contract import (
    BACKEND_PROTOCOLS,
    AttentionBackend,
    CallSpec,
    CheckResult,
    CollectiveBackend,
    Communicator,
    Device,
    LayerBackend,
    MatmulBackend,
    Support,
    conforms,
    contract_problem,
    kernel_for,
    op_methods,
)
from mistralrs_torch.ops._memo import TensorMemo
from mistralrs_torch.ops._quantized import PreparedWeight, QuantizedWeight
from mistralrs_torch.ops._registry import BACKEND_KINDS, OPS, OpSpec, op_spec
from mistralrs_torch.ops._rope import ROPE_TYPES, rope_inv_freq

__all__ = [
    "BACKEND_KINDS",
    "BACKEND_PROTOCOLS",
    "OPS",
    "ROPE_TYPES",
    "AttentionBackend",
    "CallSpec",
    "CheckResult",
    "CollectiveBackend",
    "Communicator",
    "Device",
    "LayerBackend",
    "MatmulBackend",
    "OpSpec",
    "PreparedWeight",
    "QuantizedWeight",
    "Support",
    "TensorMemo",
    "conforms",
    "contract_problem",
    "kernel_for",
    "op_methods",
    "op_spec",
    "rope_inv_freq",
]
