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

__all__ = [
    "AttentionBackend",
    "CallSpec",
    "CheckResult",
    "CollectiveBackend",
    "Communicator",
    "Device",
    "MatmulBackend",
    "Support",
    "conforms",
]
