"""The one exception hierarchy of mistralrs.

Every error raised on purpose derives from :class:`MistralrsError`. Messages say
what failed, the bad value, the valid choices and the fix, in the voice of the
mistral.rs troubleshooting guide; the CLI prints them without a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "CollectiveError",
    "ConfigError",
    "FallbackError",
    "ManifestError",
    "MistralrsError",
    "OpInputError",
    "PluginAPIVersionError",
    "PluginError",
    "SelectionError",
    "SystemProfileError",
    "UnsupportedCallError",
    "Violation",
]


class MistralrsError(Exception):
    """Base class of every error mistralrs raises on purpose."""


class PluginError(MistralrsError):
    """A plugin could not be loaded or misbehaved (fatal only under MISTRALRS_STRICT_PLUGINS=1)."""


class ManifestError(PluginError):
    """A feature manifest is malformed."""


class PluginAPIVersionError(PluginError):
    """A plugin targets a plugin API version this core does not support."""


class ConfigError(MistralrsError):
    """A configuration the user supplied (environment variable, config file) is malformed."""


class SystemProfileError(ConfigError):
    """A system snapshot given with --system cannot be found or read."""


@dataclass(frozen=True)
class Violation:
    """One broken rule of an explicit feature selection."""

    feature: str
    rule: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.message}: {self.fix}"


class SelectionError(MistralrsError):
    """An explicit feature selection breaks one or more rules; all of them are listed."""

    def __init__(self, violations: Sequence[Violation], source: str) -> None:
        self.violations = tuple(violations)
        self.source = source
        lines = [f"the features selected by {source} cannot be enabled here:"]
        lines += [f"  - {v}" for v in self.violations]
        super().__init__("\n".join(lines))


class UnsupportedCallError(MistralrsError):
    """No bound backend supports an op call; the message lists each backend's reason."""


class OpInputError(MistralrsError, ValueError):
    """An op was called with tensors that break its contract (shape, dtype, device, layout or values).

    The message names the argument, what it is and what the op expects.
    """


class FallbackError(UnsupportedCallError):
    """MISTRALRS_NO_FALLBACK=1 and the preferred backend refused a call that a lower one would take."""


class CollectiveError(MistralrsError):
    """A collective could not complete: a peer died, froze or never joined within the timeout.

    ``rank`` is the rank that raised it, ``peers`` the ranks found unresponsive
    (empty when that could not be told) and ``timeout`` the timeout in seconds
    that was in force.
    """

    def __init__(self, message: str, *, rank: int | None = None, peers: Sequence[int] = (),
                 timeout: float | None = None) -> None:
        super().__init__(message)
        self.rank = rank
        self.peers = tuple(peers)
        self.timeout = timeout
