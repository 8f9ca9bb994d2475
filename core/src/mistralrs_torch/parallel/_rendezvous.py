"""Where the ranks of a job meet and how long they wait: parsed from the environment, no torch.

Collective plugins build a :class:`Rendezvous` from their own configuration
(ring's RING_CONFIG) or from the standard torchrun variables, which torchrun,
Slurm and Kubernetes launchers set; :func:`collective_timeouts` reads the
finite timeouts every torch.distributed communicator of mistralrs uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from mistralrs_torch._errors import ConfigError
from mistralrs_torch.parallel._variables import (
    COLLECTIVE_TIMEOUT_VAR,
    DEFAULT_TIMEOUT,
    RENDEZVOUS_TIMEOUT_VAR,
)
from mistralrs_torch.validation import env_int, env_seconds, parse_int, shown

if TYPE_CHECKING:
    import re

#: The most ranks one job may have (torchrun jobs of 100,000 GPUs exist; this leaves room and refuses absurd values).
MAX_WORLD_SIZE = 1 << 20
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


def collective_timeouts(environ: Mapping[str, str]) -> Timeouts:
    """The collective and rendezvous timeouts in force (InputError for a value that is not a number of seconds
    in 0 < s <= a week: a collective must never wait forever, and torch's clocks overflow long before)."""
    def seconds(name: str) -> float:
        return env_seconds(environ, name, DEFAULT_TIMEOUT, fix=f"a collective must never wait forever: set {name}="
                           f"{DEFAULT_TIMEOUT:g} (the default), or unset it")

    return Timeouts(seconds(COLLECTIVE_TIMEOUT_VAR), seconds(RENDEZVOUS_TIMEOUT_VAR))


def local_rank(environ: Mapping[str, str]) -> int:
    """LOCAL_RANK, this process's index on its machine (0 when unset); InputError unless ASCII digits in range.

    The one reader of LOCAL_RANK: the runtime's default device, the rendezvous and the collective plugins.
    """
    return env_int(environ, "LOCAL_RANK", 0, MAX_WORLD_SIZE - 1, "this process's index on its machine (0, 1, ...)",
                   0) or 0


def launched_ranks_here(environ: Mapping[str, str]) -> int | None:
    """LOCAL_WORLD_SIZE, the ranks a launcher started on this machine (None when unset); InputError when bad."""
    return env_int(environ, "LOCAL_WORLD_SIZE", 1, MAX_WORLD_SIZE, "the number of ranks on this machine")


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
    world_size = parse_int(environ["WORLD_SIZE"], "WORLD_SIZE", 1, MAX_WORLD_SIZE, "the number of processes in the job")
    rank = parse_int(environ["RANK"], "RANK", 0, world_size - 1, f"this process's rank, 0..{world_size - 1}")
    port = parse_int(environ["MASTER_PORT"], "MASTER_PORT", 1, 65535,
                     "the port rank 0 listens on for the rendezvous, 1..65535")
    addr = environ["MASTER_ADDR"].strip()
    if len(addr) > 253 or (not valid_host(addr) and not is_wildcard(addr)):
        raise ConfigError(f"MASTER_ADDR={shown(addr)} is neither an IP address nor a host name: set it to rank 0's "
                          "address")
    agent = environ.get("TORCHELASTIC_USE_AGENT_STORE", "").strip().lower() == "true"
    restarts = env_int(environ, "TORCHELASTIC_RESTART_COUNT", 0, 1 << 31, "the launcher's restart count", 0)
    return Rendezvous(rank, world_size, addr, port, local_rank(environ), namespace=str(restarts), agent_store=agent)
