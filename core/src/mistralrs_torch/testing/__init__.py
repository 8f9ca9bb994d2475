"""The conformance kit for plugin authors: the contract every plugin distribution must pass.

``CONTRACT_CHECKS`` run without torch; ``run_kit`` (imports torch) also runs
every backend of the plugin's active features against the float64 reference.
"""

from typing import Any

from mistralrs_torch.testing._contract import CONTRACT_CHECKS, PluginUnderTest

__all__ = ["CONTRACT_CHECKS", "KitResult", "PluginUnderTest", "run_kit"]


def __getattr__(name: str) -> Any:
    if name in ("KitResult", "run_kit"):  # they import torch
        from mistralrs_torch.testing import _kit

        return getattr(_kit, name)
    raise AttributeError(f"module 'mistralrs_torch.testing' has no attribute {name!r}")
