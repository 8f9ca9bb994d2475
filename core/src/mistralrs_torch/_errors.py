"""The one exception hierarchy of mistralrs.

Every error raised on purpose derives from :class:`MistralrsError`. Messages say
what failed, the bad value, the valid choices and the fix, in the voice of the
mistral.rs troubleshooting guide; the CLI prints them without a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


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


class InputError(ConfigError):
    """One input the user supplied (a file, a variable, an option) is malformed.

    ``source`` names the input (a path, ``LOCAL_RANK='x'``, ``--grace 'x'``), ``field``
    the part of it at fault ("" for the whole input, ``gpus[0].index`` inside a file),
    ``problem`` what is wrong, phrased to follow the name ("is not a whole number"),
    and ``fix`` what to do; callers that keep their own per-field records (ring's
    problems) take them apart again.
    """

    def __init__(self, source: str, problem: str, fix: str, field: str = "") -> None:
        self.source, self.field, self.problem, self.fix = source, field, problem, fix
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where} {problem}: {fix}" if fix else f"{where} {problem}")


class SystemProfileError(ConfigError):
    """A system snapshot given with --system cannot be found, read or validated."""


class ModelLoadError(ConfigError):
    """A model path is missing, truncated or unsupported; the message names the file and the field."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong, said as what is wrong and how to fix it: the record every rule, check and validator returns.

    ``subject`` is what it concerns (a feature, a doctor check, a file), ``field`` the part of the subject at
    fault ("" for the whole of it), and ``rule`` the rule it breaks, for programs that sort problems ("" when
    none applies). ``message`` names the thing and the bad value; ``fix`` says what to do ("" when nothing is
    to be done, as for a doctor check that passed). ``str()`` is "message: fix", the way every command prints it.
    """

    subject: str
    message: str
    fix: str = ""
    field: str = ""
    rule: str = ""

    @property
    def where(self) -> str:
        """``subject: field``, or the subject alone."""
        return f"{self.subject}: {self.field}" if self.field else self.subject

    def __str__(self) -> str:
        return f"{self.message}: {self.fix}" if self.fix else self.message


class SelectionError(MistralrsError):
    """An explicit feature selection breaks one or more rules; all of them are listed."""

    def __init__(self, violations: Sequence[Problem], source: str) -> None:
        self.violations = tuple(violations)
        self.source = source
        lines = [f"the features selected by {source} cannot be enabled here:"]
        lines += [f"  - {v}" for v in self.violations]
        super().__init__("\n".join(lines))


class ContextLengthError(ConfigError):
    """A prompt as long as the model's context or longer: refused when added, never truncated."""

    def __init__(self, message: str, *, tokens: int, context: int) -> None:
        super().__init__(message)
        self.tokens, self.context = tokens, context


class KVCacheFullError(MistralrsError):
    """The paged KV cache has too few blocks for a sequence: never truncated, refused with the blocks needed."""

    def __init__(self, message: str, *, needed: int, free: int, total: int) -> None:
        super().__init__(message)
        self.needed, self.free, self.total = needed, free, total


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
