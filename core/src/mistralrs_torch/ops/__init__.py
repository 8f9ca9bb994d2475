"""The op contract backends implement: devices, attention, matmul, collectives."""

from mistralrs_torch.ops._contract import (
    AttentionBackend,
    CallSpec,
    CheckResult,
    CollectiveBackend,
    Communicator,
    Device,
    MatmulBackend,
    Support,
    conforms,
)
from mistralrs_torch.ops._quantized import QuantizedWeight

__all__ = [
    "AttentionBackend",
    "CallSpec",
    "CheckResult",
    "CollectiveBackend",
    "Communicator",
    "Device",
    "MatmulBackend",
    "QuantizedWeight",
    "Support",
    "conforms",
]
