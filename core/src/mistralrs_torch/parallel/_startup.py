"""Start-up of a communicator: host or reach the rendezvous store, then wait until every rank has joined.

The whole wait is bounded by MISTRALRS_RENDEZVOUS_TIMEOUT, measured from the
start: every store call runs against that deadline (:func:`._store.within`), so
neither torch's connection retries nor a frozen store host can stretch it. Who
joined is read from the store while waiting; when time is up the error names
the ranks that never joined, and rank 0 (the store host) publishes that list
and waits a moment for the others to read it before it exits with its store,
so that no survivor mistakes the store going away for rank 0's fault.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import time
from typing import Any

import torch.distributed as dist

from mistralrs_torch._errors import CollectiveError, ConfigError
from mistralrs_torch.parallel._rendezvous import RENDEZVOUS_TIMEOUT_VAR, Rendezvous, is_wildcard
from mistralrs_torch.parallel._store import Late, first_line, heartbeat_key, seconds, within

#: How often a waiting rank reads who has joined.
_POLL = 0.1
#: What a store call begun just before the deadline may take beyond it before it counts as unanswered.
_CALL_SLACK = 0.25
#: How long rank 0 waits, after its own deadline, for the ranks that joined to read which ranks did not.
_VERDICT_WAIT = 1.0


class Startup:
    """One rank's start-up against a deadline: :meth:`store` then :meth:`join`. Errors name who is missing."""

    def __init__(self, rendezvous: Rendezvous, timeout: float, prefix: str, mention: Any = lambda: "") -> None:
        self.r, self.timeout, self.prefix = rendezvous, timeout, prefix
        self.deadline = time.monotonic() + timeout
        #: Called when an error is built: names the log of torch's own messages, when there is one.
        self._mention = mention
        self.joined: set[int] = set()

    def _call(self, call: Any) -> Any:
        return within(self.deadline + _CALL_SLACK - time.monotonic(), call)

    def connect_host(self) -> str:
        """Where this rank reaches the store (rank 0 listening on every interface reaches itself on loopback)."""
        r = self.r
        return "127.0.0.1" if r.hosts_store and is_wildcard(r.master_addr) else r.master_addr.strip("[]")

    # -- the store -------------------------------------------------------------------------------

    def store(self) -> Any:
        """The rendezvous store: hosted here on rank 0, reached as a client elsewhere."""
        r = self.r
        if not r.hosts_store:
            try:
                self._reachable()
                return self._call(lambda: dist.TCPStore(r.master_addr.strip("[]"), r.master_port, None, False,
                                                        seconds(max(0.1, self.deadline - time.monotonic()))))
            except (OSError, RuntimeError, Late) as exc:
                raise CollectiveError(
                    f"rank {r.rank} of {r.world_size} could not reach the rendezvous store of rank 0 at "
                    f"{r.master_addr}:{r.master_port} ({r.source}) within {self.timeout:g}s "
                    f"({RENDEZVOUS_TIMEOUT_VAR}): {first_line(exc)}: start rank 0, check {r.addr_name} and "
                    f"{r.port_name}, and that no firewall blocks port {r.master_port} on rank 0's machine"
                    + self._mention(), rank=r.rank, peers=[] if r.agent_store else [0], timeout=self.timeout) \
                    from None
        fd = self._listen()
        try:
            return dist.TCPStore(self.connect_host(), r.master_port, None, True, seconds(self.timeout),
                                 wait_for_workers=False, master_listen_fd=fd)
        except RuntimeError as exc:
            if fd is not None:
                _close_quietly(fd)
            if "EADDRINUSE" in str(exc) or "in use" in str(exc).lower():
                raise self._port_in_use() from None
            raise ConfigError(f"rank 0 could not start the rendezvous store on {r.master_addr}:{r.master_port} "
                              f"({r.source}): {first_line(exc)}: check {r.addr_name} and {r.port_name}") from None

    def _reachable(self) -> None:
        """Wait until rank 0's store accepts connections, or the deadline passes (OSError then).

        Done here rather than by TCPStore, whose own retries overrun the deadline and print C++ warnings.
        """
        address = (self.r.master_addr.strip("[]"), self.r.master_port)
        while True:
            remaining = self.deadline - time.monotonic()
            try:
                with socket.create_connection(address, timeout=max(0.05, min(1.0, remaining))):
                    return
            except OSError:
                if remaining <= 0:
                    raise
            time.sleep(min(_POLL, max(0.0, remaining)))

    def _listen(self) -> int | None:
        """A listening socket bound to the configured address, for the store to adopt (None: every interface)."""
        r = self.r
        try:
            address = ipaddress.ip_address(r.master_addr.strip("[]"))
        except ValueError:
            # A wildcard, or a host name: names can resolve to 127.0.1.1 on their own machine (Debian does
            # that), which would hide the store from the other machines, so listen on every interface.
            return None
        sock = socket.socket(socket.AF_INET6 if address.version == 6 else socket.AF_INET, socket.SOCK_STREAM)
        try:
            if os.name == "posix":  # lets a restarted job reuse the port while old connections sit in TIME_WAIT
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((str(address), r.master_port))
            sock.listen(1024)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise self._port_in_use() from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(f"{r.addr_name}={r.master_addr} ({r.source}) is not an address of this machine, "
                                  f"and rank 0 listens on it: set {r.addr_name} to one of this machine's addresses, "
                                  "or 0.0.0.0 to listen on all of them") from None
            raise ConfigError(f"rank 0 cannot listen on {r.master_addr}:{r.master_port} ({r.source}): {exc}: "
                              f"check {r.addr_name} and {r.port_name}") from None
        return sock.detach()

    def _port_in_use(self) -> ConfigError:
        r = self.r
        return ConfigError(f"{r.port_name}={r.master_port} ({r.source}) is already in use on {r.master_addr}: "
                           f"another job, or an earlier run still alive, holds it: pick a free port for "
                           f"{r.port_name}, or stop the process that holds it (`ss -ltnp 'sport = :{r.master_port}'` "
                           "shows it)")

    # -- joining ---------------------------------------------------------------------------------

    def join(self, store: Any) -> None:
        """Claim this rank, then wait until every rank has; ConfigError or CollectiveError naming the problem."""
        r, p = self.r, self.prefix
        try:
            claims = self._call(lambda: store.add(f"{p}rank/{r.rank}", 1))
            if claims > 1:
                raise ConfigError(f"rank {r.rank} is claimed by {claims} processes ({r.source}): give every process "
                                  f"its own rank, 0..{r.world_size - 1}")
            self._call(lambda: (store.set(f"{p}world/{r.rank}", str(r.world_size)),
                                store.add(heartbeat_key(p, r.rank), 1), store.append(f"{p}joined", f"{r.rank} ")))
            while not self._everyone(store):
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    self._give_up(store)
                time.sleep(min(_POLL, max(0.0, remaining)))
            worlds = self._call(lambda: store.multi_get([f"{p}world/{k}" for k in range(r.world_size)]))
        except (RuntimeError, Late) as exc:
            raise self._store_gone(exc) from None
        other = {k: int(w) for k, w in enumerate(worlds) if int(w) != r.world_size}
        if other:
            raise ConfigError(f"the ranks disagree on the world size: this rank {r.rank} ({r.source}) has "
                              f"{r.world_size}, " + ", ".join(f"rank {k} has {w}" for k, w in other.items())
                              + ": give every rank the same world size")

    def _everyone(self, store: Any) -> bool:
        """Whether every rank has joined; reads rank 0's verdict when it has already given up."""
        p = self.prefix
        self.joined = {int(k) for k in self._call(lambda: store.get(f"{p}joined")).split()}
        if self.joined.issuperset(range(self.r.world_size)):  # (a rank of a larger world may join too)
            return True
        if not self.r.hosts_store and self._call(lambda: store.check([f"{p}verdict"])):
            missing = [int(k) for k in self._call(lambda: store.get(f"{p}verdict")).split()]
            self._call(lambda: store.add(f"{p}verdict-read", 1))
            raise self._never_joined(missing, "rank 0, which hosts the rendezvous, gave up waiting for them")
        return False

    def _give_up(self, store: Any) -> None:
        r, p = self.r, self.prefix
        missing = sorted(set(range(r.world_size)) - self.joined)
        if r.hosts_store:
            # Publish who is missing, and wait briefly for the ranks that joined to read it before this
            # process, and the store with it, goes away.
            store.set(f"{p}verdict", " ".join(map(str, missing)))
            readers = len(self.joined) - 1
            until = time.monotonic() + _VERDICT_WAIT
            while store.add(f"{p}verdict-read", 0) < readers and time.monotonic() < until:
                time.sleep(0.02)
        else:  # leaving on its own clock: rank 0 need not wait for this rank to read its verdict
            try:
                self._call(lambda: store.add(f"{p}verdict-read", 1))
            except (RuntimeError, Late):
                pass  # rank 0 has already gone: this rank's own view of who joined stands
        raise self._never_joined(missing, f"the rendezvous timed out after {self.timeout:g}s "
                                          f"({RENDEZVOUS_TIMEOUT_VAR})")

    def _never_joined(self, missing: list[int], why: str) -> CollectiveError:
        r = self.r
        ranks = f"rank{'s' if len(missing) != 1 else ''} {', '.join(map(str, missing))}"
        return CollectiveError(
            f"rank {r.rank} of {r.world_size}: {ranks} never joined the rendezvous at {r.master_addr}:{r.master_port} "
            f"({r.source}): {why}; joined: {', '.join(map(str, sorted(self.joined)))}: start every rank with its own "
            f"rank number and the same {r.addr_name}/{r.port_name}, check the output of {ranks}, or raise "
            f"{RENDEZVOUS_TIMEOUT_VAR}" + self._mention(), rank=r.rank, peers=missing, timeout=self.timeout)

    def _store_gone(self, exc: BaseException) -> CollectiveError:
        r = self.r
        host = "the launcher's rendezvous store" if r.agent_store else "rank 0, which hosts the rendezvous store,"
        seen = ", ".join(map(str, sorted(self.joined))) or "none seen yet"
        return CollectiveError(
            f"rank {r.rank} of {r.world_size}: {host} stopped answering at {r.master_addr}:{r.master_port} "
            f"({r.source}) while the ranks were joining ({first_line(exc)}); ranks that had joined: {seen}; which of "
            "the others are missing is unknown: check rank 0's output (crashed, killed or frozen) and restart all "
            f"ranks" + self._mention(), rank=r.rank, peers=[] if r.agent_store else [0], timeout=self.timeout)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
