"""ring's doctor checks: RING_CONFIG validity, the world-size rules, timeouts, and gloo's interface. No torch."""

from __future__ import annotations

import socket
from collections.abc import Mapping

from mistralrs_torch import CheckResult, ConfigError
from mistralrs_torch.doctor import collective_timeout_check
from mistralrs_torch.parallel import is_loopback, is_wildcard, torchrun_rendezvous
from mistralrs_torch_ring._config import check_ring_config
from mistralrs_torch_ring._rendezvous import ring_rendezvous

_FIREWALL = ("gloo connects every pair of ranks on ports the OS picks (not port/right_port): allow TCP between the "
             "ranks' machines on the ephemeral range, and master_port on rank 0's machine")


def _hostname_is_loopback() -> bool:
    try:
        return is_loopback(socket.gethostbyname(socket.gethostname()))
    except OSError:
        return False


def ring_checks(active: frozenset[str], environ: Mapping[str, str]) -> list[CheckResult]:
    """Checks for doctor; they never raise for bad user input."""
    path = environ.get("RING_CONFIG", "").strip()
    if not path and "ring" not in active:
        return []
    checks: list[CheckResult] = []
    checks.append(collective_timeout_check(environ))
    master = None
    if path:
        config, problems = check_ring_config(path)
        for p in problems:
            checks.append(
                CheckResult(
                    "RING_CONFIG",
                    f"{p.where}: {p.message}",
                    p.fix,
                    status="error",
                )
            )
        if config is not None:
            checks.append(
                CheckResult(
                    "RING_CONFIG",
                    f"{path}: rank {config.rank} of {config.world_size}, "
                    f"rendezvous at {config.master_ip}:{config.master_port}",
                    _FIREWALL,
                    status="ok",
                )
            )
            master = config.master_ip
        if "ring" not in active:
            checks.append(
                CheckResult(
                    "RING_CONFIG",
                    "RING_CONFIG is set but ring is not active, so it is ignored",
                    "select ring (auto mode does when RING_CONFIG is set, "
                    "unless another selection is in force), or unset RING_CONFIG",
                    status="warning",
                )
            )
    else:
        try:
            torchrun = torchrun_rendezvous(environ)
        except ConfigError as exc:
            torchrun = None
            checks.append(CheckResult("ring rendezvous", str(exc), status="error"))
        else:
            if torchrun is None:
                checks.append(
                    CheckResult(
                        "ring rendezvous",
                        "ring is active but neither RING_CONFIG nor torchrun's RANK, "
                        "WORLD_SIZE, MASTER_ADDR and MASTER_PORT are set",
                        "set RING_CONFIG (write a set with `mistralrs ring configs --world-size N --out DIR`), "
                        "or start the ranks with `mistralrs launch -n N --backend ring -- COMMAND` or torchrun",
                        status="error",
                    )
                )
            else:
                master = torchrun.master_addr
    if master is not None:
        try:
            rendezvous = ring_rendezvous(environ)
        except ConfigError as exc:  # the file itself passed above: this is a world-size rule or a clash
            checks.append(CheckResult("ring rendezvous", str(exc), status="error"))
        else:
            if not path:
                checks.append(
                    CheckResult(
                        "ring rendezvous",
                        f"torchrun variables: rank {rendezvous.rank} of "
                        f"{rendezvous.world_size}, rendezvous at {rendezvous.master_addr}:"
                        f"{rendezvous.master_port}",
                        _FIREWALL,
                        status="ok",
                    )
                )
        across_machines = not is_loopback(master) and not is_wildcard(master)
        if across_machines and not environ.get("GLOO_SOCKET_IFNAME") and _hostname_is_loopback():
            checks.append(
                CheckResult(
                    "gloo interface",
                    f"this machine's host name {socket.gethostname()!r} resolves to a "
                    "loopback address, which gloo would announce to the ranks on other machines",
                    "set GLOO_SOCKET_IFNAME to the network interface the ranks share (e.g. eth0), or map the host name "
                    "to that interface's address in /etc/hosts",
                    status="warning",
                )
            )
    return checks
