"""RING_CONFIG files: reading, validation (one problem per field, naming the file), and generating a set.

The format is the seed's (mistral.rs's ring backend): one JSON object per
process with master_ip, master_port, port, right_port, right_ip (optional,
default localhost), rank and world_size. Pure Python: doctor and the CLI use
it without torch.

What each field does here (collectives run on torch.distributed's gloo):

- master_ip / master_port: the rendezvous. Rank 0 hosts torch's TCPStore
  there (listening on master_ip itself when it is an IP address, on every
  interface when it is 0.0.0.0 or a host name); every other rank connects to it.
- rank / world_size: this process's place in the job.
- port / right_port / right_ip: the ring's wiring in mistral.rs. gloo opens
  its own data connections between every pair of ranks on ports the OS
  picks, so these ports are not listened on; they are validated, and checked
  against the neighbours' files when several files are checked together, so
  that a set written for mistral.rs stays consistent.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mistralrs_torch import ConfigError, InputError, Problem
from mistralrs_torch.parallel import is_loopback, is_power_of_two, is_wildcard, valid_host
from mistralrs_torch.validation import read_json, shown
from mistralrs_torch_ring._manifest import RING_CONFIG_FIELDS

#: field -> (required, what it is, as the messages say it)
FIELDS = {f.name: (f.required, f.description) for f in RING_CONFIG_FIELDS}
_PORTS = ("master_port", "port", "right_port")
#: Ranks one ring may have: every rank needs a port on its machine, and gloo over TCP is not for more.
MAX_WORLD_SIZE = 1 << 16
_MAX_BYTES = 1 << 20
_DUPLICATES = object()


def _problem(path: str, field: str, message: str, fix: str) -> Problem:
    """One thing wrong with a ring configuration: the file, the field ("" for the whole file), what and the fix."""
    return Problem(path, message, fix, field=field)


def problem_lines(problems: Sequence[Problem]) -> list[str]:
    """One line per problem, each naming its file and field: ``  - FILE: FIELD: message: fix``."""
    return [f"  - {p.where}: {p}" for p in problems]


@dataclass(frozen=True)
class RingConfig:
    """A valid RING_CONFIG file."""

    path: str
    master_ip: str
    master_port: int
    port: int
    right_port: int
    rank: int
    world_size: int
    right_ip: str = "localhost"

    def to_json(self) -> dict[str, Any]:
        return {"master_ip": self.master_ip, "master_port": self.master_port, "port": self.port,
                "right_port": self.right_port, "right_ip": self.right_ip, "rank": self.rank,
                "world_size": self.world_size}


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[Any, Any]:
    result: dict[Any, Any] = {}
    duplicates = []
    for key, value in pairs:
        if key in result:
            duplicates.append(key)
        result[key] = value
    if duplicates:  # under a key no JSON text can spell, so a file cannot forge it
        result[_DUPLICATES] = sorted(set(duplicates))
    return result


def _read(path: str) -> tuple[Any, list[Problem]]:
    fix = "point RING_CONFIG at this process's ring JSON file (write a set with `mistralrs ring configs`)"
    try:
        return read_json(path, "a ring configuration", max_bytes=_MAX_BYTES, fix=fix, pairs=_no_duplicates), []
    except InputError as exc:
        return None, [_problem(path, exc.field, exc.problem, exc.fix)]


def _int_field(path: str, data: dict[str, Any], name: str, problems: list[Problem]) -> int | None:
    if name not in data:
        return None
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) or \
            (isinstance(value, float) and not (math.isfinite(value) and value.is_integer())):
        problems.append(_problem(path, name, f"must be an integer, not {_shown(value)}",
                                f"write {name} as a number, e.g. \"{name}\": {_example(name)}"))
        return None
    if isinstance(value, str):
        hint = f"write {value.strip()} without quotes" if value.strip().lstrip("-").isdigit() else \
            f"write {name} as a number, e.g. \"{name}\": {_example(name)}"
        problems.append(_problem(path, name, f"must be an integer, not {_shown(value)}", hint))
        return None
    return int(value)


def _example(name: str) -> int:
    return {"master_port": 1234, "port": 12345, "right_port": 12346, "rank": 0, "world_size": 2}.get(name, 0)


def _shown(value: Any) -> str:
    kind = {bool: "boolean", str: "string", list: "array", dict: "object", float: "number", int: "integer"}.get(
        type(value), type(value).__name__)
    return "null" if value is None else f"{kind} {shown(value, 40)}"


def _str_field(path: str, data: dict[str, Any], name: str, problems: list[Problem]) -> str | None:
    if name not in data:
        return None
    value = data[name]
    if not isinstance(value, str):
        problems.append(_problem(path, name, f"must be a string (an IP address or host name), not {_shown(value)}",
                                f"write it in quotes, e.g. \"{name}\": \"127.0.0.1\""))
        return None
    return value.strip()


def check_ring_config(path: str | Path) -> tuple[RingConfig | None, list[Problem]]:
    """Read and validate one file: the config when valid, and every problem found (never raises)."""
    path = str(path)
    data, problems = _read(path)
    if problems:
        return None, problems
    if not isinstance(data, dict):
        return None, [_problem(path, "", f"must hold a JSON object, not {_shown(data)}",
                              'write {"master_ip": ..., "master_port": ..., "port": ..., "right_port": ..., '
                              '"rank": ..., "world_size": ...}')]
    for name in data.pop(_DUPLICATES, ()):
        problems.append(_problem(path, name, "appears more than once (the last one would silently win)",
                                f"keep one {name}"))
    for name in sorted(set(data) - set(FIELDS)):
        close = difflib.get_close_matches(name, list(FIELDS), n=1)
        problems.append(_problem(path, name[:60], "is not a ring configuration field",
                                f"did you mean {close[0]}?" if close else f"remove it; fields are {', '.join(FIELDS)}"))
    for name, (required, what) in FIELDS.items():
        if required and name not in data:
            problems.append(_problem(path, name, f"is missing ({what})", f"add \"{name}\": "
                                    + (f"{_example(name)}" if name != "master_ip" else '"127.0.0.1"')))
    ints = {name: _int_field(path, data, name, problems) for name in (*_PORTS, "rank", "world_size")}
    master_ip = _str_field(path, data, "master_ip", problems)
    right_ip = _str_field(path, data, "right_ip", problems) if "right_ip" in data else "localhost"
    for name in _PORTS:
        value = ints[name]
        if value is not None and not 1 <= value <= 65535:
            problems.append(_problem(path, name, f"{shown(value)} is not a TCP port", "use a port in 1..65535 (ports "
                                    "below 1024 need root; 1024..65535 is the usual choice)"))
            ints[name] = None
    world, rank = ints["world_size"], ints["rank"]
    if world is not None and world > MAX_WORLD_SIZE:
        problems.append(_problem(path, "world_size", f"{shown(world)} is more than {MAX_WORLD_SIZE} processes",
                                f"use at most {MAX_WORLD_SIZE} ranks (a power of two)"))
        world = None
    elif world is not None and (world < 2 or not is_power_of_two(world)):
        lower = 1 << (world.bit_length() - 1) if world >= 2 else 0
        problems.append(_problem(path, "world_size", f"{world} is not a power of two >= 2 (ring needs 2, 4, 8, ...)",
                                f"use {lower} or {lower * 2} processes" if lower else
                                "use 2 or more processes (a single process needs no ring)"))
        world = None
    if rank is not None and (rank < 0 or rank >= (world if world is not None else MAX_WORLD_SIZE)):
        bounds = f"0..{(world if world is not None else MAX_WORLD_SIZE) - 1}"
        problems.append(_problem(path, "rank", f"{shown(rank)} is outside {bounds}",
                                f"give this process a rank in {bounds}"))
        rank = None
    if master_ip is not None:
        if rank is not None and rank != 0 and is_wildcard(master_ip):
            problems.append(_problem(path, "master_ip", f"{master_ip or '(empty)'!s} is not an address rank {rank} can "
                                    "connect to (0.0.0.0 only means 'every interface' to rank 0)",
                                    "set master_ip to rank 0's address (127.0.0.1 when all ranks share this machine)"))
        elif not is_wildcard(master_ip) and not valid_host(master_ip):
            problems.append(_problem(path, "master_ip", f"{shown(master_ip)} is neither an IP address nor a host name",
                                    "set it to rank 0's address, e.g. 192.168.1.10"))
    if right_ip is not None and "right_ip" in data and (is_wildcard(right_ip) or not valid_host(right_ip)):
        problems.append(_problem(path, "right_ip", f"{shown(right_ip)} is not an address of the next rank",
                                "set it to the next rank's address, or remove it for localhost"))
        right_ip = None
    port, right_port = ints["port"], ints["right_port"]
    if port is not None and right_port is not None and port == right_port and right_ip is not None \
            and is_loopback(right_ip):
        problems.append(_problem(path, "right_port", f"equals port ({port}) while the next rank runs on this machine "
                                f"(right_ip {right_ip})", "give each rank on one machine its own port"))
    if rank == 0 and port is not None and port == ints["master_port"]:
        problems.append(_problem(path, "port", f"equals master_port ({port}) on rank 0, which listens on both",
                                "pick different ports"))
    if problems:
        return None, problems
    assert master_ip is not None and right_ip is not None and world is not None and rank is not None
    # No problem means every port was read: ints holds no None here (ignored below).
    return RingConfig(path, master_ip, ints["master_port"], ints["port"], ints["right_port"], rank, world,  # type: ignore[arg-type]
                      right_ip), []


def load_ring_config(path: str | Path) -> RingConfig:
    """A valid configuration, or ConfigError listing every problem (one per line, each naming file and field)."""
    config, problems = check_ring_config(path)
    if problems:
        raise ConfigError(_joined(f"RING_CONFIG={path} is not a valid ring configuration", problems))
    assert config is not None
    return config


def _joined(head: str, problems: Sequence[Problem]) -> str:
    return "\n".join([f"{head}:", *problem_lines(problems)])


def _host(addr: str) -> str:
    """A comparable form of an address: every loopback spelling is the same machine."""
    return "localhost" if is_loopback(addr) else addr.lower().strip("[]")


def check_ring_configs(paths: Iterable[str | Path]) -> tuple[list[RingConfig], list[Problem]]:
    """Validate a whole set (one file per rank) and how the files fit together."""
    configs, problems = [], []
    for path in paths:
        config, found = check_ring_config(path)
        problems += found
        if config is not None:
            configs.append(config)
    if problems or not configs:
        return configs, problems
    first = configs[0]
    for c in configs[1:]:
        for name in ("world_size", "master_port"):
            if getattr(c, name) != getattr(first, name):
                problems.append(_problem(c.path, name, f"{getattr(c, name)} differs from {getattr(first, name)} in "
                                        f"{first.path}", f"give every rank the same {name}"))
    if problems:
        return configs, problems
    world = first.world_size
    by_rank: dict[int, RingConfig] = {}
    for c in configs:
        if c.rank in by_rank:
            problems.append(_problem(c.path, "rank", f"{c.rank} is also the rank of {by_rank[c.rank].path}",
                                    f"give each file its own rank, 0..{world - 1}"))
        by_rank.setdefault(c.rank, c)
    missing = [r for r in range(world) if r not in by_rank]
    if missing:
        problems.append(_problem(", ".join(sorted(c.path for c in configs)), "rank",
                                f"no file for rank{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} "
                                f"of world_size {world}", "write one file per rank (`mistralrs ring configs` does)"))
    if problems:
        return configs, problems
    ring = [by_rank[r] for r in range(world)]
    # Where each rank runs, as its left neighbour's right_ip says; rank 0's is also the master_ip of the others.
    hosts = {(r + 1) % world: _host(ring[r].right_ip) for r in range(world)}
    masters = {_host(c.master_ip) for c in ring[1:]}
    if len(masters) > 1:
        problems.append(_problem(ring[1].path, "master_ip", "the ranks name different master_ip values: "
                                + ", ".join(f"rank {c.rank} {c.master_ip}" for c in ring[1:]),
                                "give every rank rank 0's address"))
    elif masters and not is_wildcard(ring[0].master_ip) and _host(ring[0].master_ip) not in masters:
        problems.append(_problem(ring[0].path, "master_ip", f"{ring[0].master_ip} differs from the master_ip of the "
                                f"other ranks ({ring[1].master_ip})", "give every rank rank 0's address"))
    master = next(iter(masters), None)
    if master is not None and hosts[0] != master:
        problems.append(_problem(ring[-1].path, "right_ip", f"{ring[-1].right_ip} (rank {world - 1}'s right neighbour "
                                f"is rank 0) differs from rank 0's address {ring[1].master_ip}",
                                f"set right_ip to {ring[1].master_ip}"))
    for r, c in enumerate(ring):
        following = ring[(r + 1) % world]
        if c.right_port != following.port:
            problems.append(_problem(c.path, "right_port", f"{c.right_port} is not the port of the next rank "
                                    f"{following.rank} ({following.port} in {following.path})",
                                    f"set right_port to {following.port}"))
    taken: dict[tuple[str, int], int] = {}
    for r, c in enumerate(ring):
        key = (hosts[r], c.port)
        if key in taken:
            problems.append(_problem(c.path, "port", f"{c.port} is also the port of rank {taken[key]} on the same "
                                    f"machine ({hosts[r]})", "give each rank on one machine its own port"))
        taken.setdefault(key, r)
    if (hosts[0], first.master_port) in taken and taken[(hosts[0], first.master_port)] != 0:
        other = taken[(hosts[0], first.master_port)]
        problems.append(_problem(ring[other].path, "port", f"{first.master_port} is rank 0's master_port on the same "
                                "machine", "pick another port"))
    return configs, problems


def ring_config_set(world_size: int, hosts: Sequence[str] = ("127.0.0.1",), *, master_ip: str | None = None,
                    master_port: int = 29500, base_port: int = 12345) -> list[RingConfig]:
    """A consistent set: ranks spread over ``hosts`` in contiguous blocks (one host per rank also works).

    Raises ConfigError for a world size, host list or port range that cannot make a valid set.
    """
    problems = []
    if not 2 <= world_size <= MAX_WORLD_SIZE or not is_power_of_two(world_size):
        problems.append(f"--world-size {shown(world_size)} is not a power of two from 2 to {MAX_WORLD_SIZE}: use 2, 4, "
                        "8, ...")
    hosts = [h.strip() for h in hosts if h.strip()] or ["127.0.0.1"]
    bad = [h for h in hosts if len(h) > 253 or is_wildcard(h) or not valid_host(h)]
    if len(hosts) > MAX_WORLD_SIZE:
        problems.append(f"--hosts lists {len(hosts)} hosts, more than {MAX_WORLD_SIZE}: give one per machine")
    elif bad:
        problems.append(f"--hosts entry {shown(bad[0])} is not an address other machines can connect to: "
                        "give each machine's IP address or host name")
    if world_size >= 2 and world_size % len(hosts):
        problems.append(f"{len(hosts)} hosts cannot hold {world_size} ranks evenly: give one host per rank, or a "
                        f"number of hosts that divides {world_size}")
    if master_ip is not None and (len(master_ip) > 253 or is_wildcard(master_ip) or not valid_host(master_ip)):
        problems.append(f"--master-ip {shown(master_ip)} is not an address the other ranks can connect to: give "
                        "rank 0's IP address or host name")
    for name, port in (("--master-port", master_port), ("--base-port", base_port)):
        if not 1 <= port <= 65535:
            problems.append(f"{name} {shown(port)} is not a TCP port: use one in 1..65535")
    if problems:
        raise ConfigError("cannot write a ring configuration set:\n" + "\n".join(f"  - {p}" for p in problems))
    per_host = world_size // len(hosts)
    owner = list(hosts) if len(hosts) == world_size else [hosts[r // per_host] for r in range(world_size)]
    # Ranks that share a machine (several hosts entries may name the same one) get consecutive ports.
    count: dict[str, int] = {}
    ports = []
    for host in owner:
        ports.append(base_port + count.get(_host(host), 0))
        count[_host(host)] = count.get(_host(host), 0) + 1
    most = max(count.values())
    if base_port + most - 1 > 65535:
        problems.append(f"--base-port {base_port} leaves no room for {most} ports on one machine: use a lower one")
    if base_port <= master_port < base_port + most:
        problems.append(f"--master-port {master_port} falls inside the ring ports {base_port}..{base_port + most - 1}:"
                        " pick a master port outside them")
    if problems:
        raise ConfigError("cannot write a ring configuration set:\n" + "\n".join(f"  - {p}" for p in problems))
    master = master_ip or owner[0]
    return [RingConfig(f"rank{r}.json", master, master_port, ports[r], ports[(r + 1) % world_size], r, world_size,
                       owner[(r + 1) % world_size]) for r in range(world_size)]


def write_ring_configs(folder: str | Path, configs: Sequence[RingConfig], *, overwrite: bool = False) -> list[Path]:
    """Write ``configs`` into ``folder`` (created), one ``rank<k>.json`` each; refuses to overwrite unless asked."""
    folder = Path(folder)
    targets = [folder / Path(c.path).name for c in configs]
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise ConfigError(f"{existing[0]} already exists: choose an empty --out folder, or pass --force to overwrite")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for target, config in zip(targets, configs, strict=True):
            target.write_text(json.dumps(config.to_json(), indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write ring configurations into {folder}: {exc.strerror or exc}: "
                          "choose a folder you can write to") from None
    return targets
