"""Where the ranks of a job meet and how long they wait: parsed from the environment, no torch.

Collective plugins build a :class:`Rendezvous` from their own configuration
(ring's RING_CONFIG) or from the standard torchrun variables, which torchrun,
Slurm and Kubernetes launchers set; :func:`collective_timeouts` reads the
finite timeouts every torch.distributed communicator of mistralrs uses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from mistralrs_torch._errors import ConfigError
from mistralrs_torch.parallel._variables import (
    COLLECTIVE_ENV_VARS,
    COLLECTIVE_TIMEOUT_VAR,
    DEFAULT_TIMEOUT,
    RENDEZVOUS_TIMEOUT_VAR,
)

if TYPE_CHECKING:
    import re

__all__ = [
    "COLLECTIVE_ENV_VARS",
    "COLLECTIVE_TIMEOUT_VAR",
    "DEFAULT_TIMEOUT",
    "RENDEZVOUS_TIMEOUT_VAR",
    "TORCHRUN_VARS",
    "Rendezvous",
    "Timeouts",
    "collective_timeouts",
    "is_loopback",
    "is_power_of_two",
    "is_wildcard",
    "torchrun_rendezvous",
    "valid_host",
]

#: The variables torchrun sets for every rank (LOCAL_RANK is optional here).
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")
_REQUIRED = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@cache
def _hostname() -> re.Pattern[str]:
    # Compiled on first use: the manifests import this module on every `mistralrs plugins list`.
    import re

    return re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                      r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


@dataclass(frozen=True)
class Timeouts:
    """Seconds a collective waits for its peers, and seconds the ranks wait for each other at start-up."""

    collective: float = DEFAULT_TIMEOUT
    rendezvous: float = DEFAULT_TIMEOUT


@dataclass(frozen=True)
class Rendezvous:
    """One rank's view of its job: its rank, the world size and where rank 0 hosts the store.

    ``source`` says where these values came from, and ``addr_name`` / ``port_name``
    how that source names the address and port, so that errors point at the
    exact field to fix (``master_port in /etc/ring/rank0.json`` or ``MASTER_PORT``).
    With ``agent_store`` a launcher (torchrun's agent) already hosts the store and
    every rank connects to it as a client. ``namespace`` separates the keys of
    successive attempts in a store that outlives them (torchrun restarts).
    """

    rank: int
    world_size: int
    master_addr: str
    master_port: int
    local_rank: int = 0
    source: str = "torchrun variables"
    addr_name: str = "MASTER_ADDR"
    port_name: str = "MASTER_PORT"
    agent_store: bool = False
    namespace: str = "0"

    @property
    def hosts_store(self) -> bool:
        """Whether this process hosts the rendezvous store (rank 0, unless a launcher's agent does)."""
        return self.rank == 0 and not self.agent_store


def is_power_of_two(n: int) -> bool:
    """1, 2, 4, 8, ..."""
    return n >= 1 and n & (n - 1) == 0


def is_wildcard(addr: str) -> bool:
    """An address that means "every interface" when listening and nothing useful when connecting."""
    return addr.strip() in ("", "0.0.0.0", "::", "[::]", "*")


def is_loopback(addr: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1."""
    addr = addr.strip().strip("[]").lower()
    if addr in ("localhost", "localhost.", "ip6-localhost"):
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


def valid_host(addr: str) -> bool:
    """An IPv4/IPv6 literal or a syntactically valid host name (it is not resolved here)."""
    import ipaddress

    try:
        ipaddress.ip_address(addr.strip("[]"))
        return True
    except ValueError:
        return bool(_hostname().match(addr)) and not addr.replace(".", "").isdigit()


def _seconds(environ: Mapping[str, str], name: str) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds > 0: a collective must never wait forever; "
                          f"set {name}=300 (the default), or unset it")
    return value


def collective_timeouts(environ: Mapping[str, str]) -> Timeouts:
    """The collective and rendezvous timeouts in force (ConfigError for a value that is not finite and > 0)."""
    return Timeouts(_seconds(environ, COLLECTIVE_TIMEOUT_VAR), _seconds(environ, RENDEZVOUS_TIMEOUT_VAR))


def _int(environ: Mapping[str, str], name: str, low: int, high: int | None, what: str) -> int:
    raw = environ[name].strip()
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={environ[name]!r} is not an integer: set it to {what}") from None
    if value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(f"{name}={value} is outside {bounds}: set it to {what}")
    return value


def torchrun_rendezvous(environ: Mapping[str, str]) -> Rendezvous | None:
    """The rendezvous torchrun-style variables describe, None when neither RANK nor WORLD_SIZE is set.

    Raises ConfigError naming the variable when they are incomplete or invalid.
    """
    if not any(environ.get(name, "").strip() for name in ("RANK", "WORLD_SIZE")):
        return None
    missing = [name for name in _REQUIRED if not environ.get(name, "").strip()]
    if missing:
        raise ConfigError(f"torchrun variables are incomplete: {', '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not set (RANK, WORLD_SIZE, MASTER_ADDR and "
                          "MASTER_PORT go together): start the job with `mistralrs launch` or torchrun, "
                          "or set all four")
    world_size = _int(environ, "WORLD_SIZE", 1, None, "the number of processes in the job")
    rank = _int(environ, "RANK", 0, world_size - 1, f"this process's rank, 0..{world_size - 1}")
    port = _int(environ, "MASTER_PORT", 1, 65535, "the port rank 0 listens on for the rendezvous, 1..65535")
    local_rank = _int(environ, "LOCAL_RANK", 0, None, "this process's index on its machine") \
        if environ.get("LOCAL_RANK", "").strip() else 0
    addr = environ["MASTER_ADDR"].strip()
    if not valid_host(addr) and not is_wildcard(addr):
        raise ConfigError(f"MASTER_ADDR={addr!r} is neither an IP address nor a host name: set it to rank 0's address")
    agent = environ.get("TORCHELASTIC_USE_AGENT_STORE", "").strip().lower() == "true"
    return Rendezvous(rank, world_size, addr, port, local_rank,
                      namespace=environ.get("TORCHELASTIC_RESTART_COUNT", "").strip() or "0", agent_store=agent)
