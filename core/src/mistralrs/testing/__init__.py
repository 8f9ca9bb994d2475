"""Testing helpers for plugin authors: the contract every plugin distribution must pass."""

from mistralrs.testing._contract import CONTRACT_CHECKS, PluginUnderTest

__all__ = ["CONTRACT_CHECKS", "PluginUnderTest"]
