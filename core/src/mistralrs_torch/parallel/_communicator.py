"""A communicator on torch.distributed, shared by the collective plugins (gloo for ring, NCCL for nccl).

torch.distributed does the work; this class adds what a server needs around it:

- a rendezvous that names the ranks that never joined, refuses duplicate ranks
  and disagreeing world sizes, and turns a port in use into a ConfigError;
- finite timeouts, and a failed collective turned into a CollectiveError on
  every surviving rank that names the unresponsive rank(s) and the timeout.
  Each rank bumps a heartbeat counter in the rendezvous store from a daemon
  thread; after a failure the survivor looks at which counters stopped moving,
  so the error says "rank 2 stopped responding" rather than gloo's
  "Connection closed by peer 127.0.0.1:46731";
- tensors on another device than the transport's (CUDA or MPS tensors for
  gloo, CPU tensors for NCCL) staged through the transport device, and dtypes
  the transport cannot reduce (found by a probe at start-up) sent as float32.
"""

from __future__ import annotations

import atexit
import datetime
import errno
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from mistralrs_torch._errors import CollectiveError, ConfigError, UnsupportedCallError
from mistralrs_torch.parallel._rendezvous import (
    COLLECTIVE_TIMEOUT_VAR,
    RENDEZVOUS_TIMEOUT_VAR,
    Rendezvous,
    Timeouts,
    is_wildcard,
)

__all__ = ["TorchDistributedCommunicator"]

_REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
#: Dtypes a transport might not reduce; probed once at start-up (gloo in some torch builds lacks bfloat16).
_PROBED = (torch.float16, torch.bfloat16)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    # gloo prefixes its messages with the C++ source location: it means nothing to a user.
    if line.startswith("[") and "] " in line:
        line = line.split("] ", 1)[1]
    # ...and follows the fact with generic advice ("This is typically caused by ... GLHF!"): keep the fact.
    return line.split(". This is typically")[0][:300]


def _delta(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=seconds)


class _Heartbeat:
    """Bumps this rank's counter in the store and watches everyone else's, from a daemon thread.

    The thread has its own store client: a store call on a frozen store host never returns (TCPStore's
    timeout does not cover it), and only this thread may be left hanging, never the caller.
    """

    def __init__(self, host: str, port: int, prefix: str, rank: int, world_size: int, interval: float) -> None:
        self.rank, self.world_size, self.interval = rank, world_size, interval
        #: A counter that has not moved for this long belongs to a dead or frozen rank.
        self.window = 3 * interval
        self.keys = [f"{prefix}hb/{r}" for r in range(world_size)]
        now = time.monotonic()
        self.values: list[object] = [None] * world_size
        self.last_change = [now] * world_size
        self.last_ok = now
        self.error = ""
        self._host, self._port = host, port
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"mistralrs-heartbeat-rank{rank}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            store = dist.TCPStore(self._host, self._port, None, False, _delta(max(5.0, 10 * self.interval)))
        except Exception as exc:  # noqa: BLE001 - the thread reports through self.error, never raises
            self.error = _first_line(exc)
            return
        read: Callable[[], list[Any]] = (lambda: store.multi_get(self.keys)) if hasattr(store, "multi_get") \
            else (lambda: [store.add(k, 0) for k in self.keys])
        while not self._stop.wait(self.interval):
            try:
                store.add(self.keys[self.rank], 1)
                values = read()
            except Exception as exc:  # noqa: BLE001 - the store host is gone: stop, last_ok goes stale
                self.error = _first_line(exc)
                return
            now = time.monotonic()
            for r, value in enumerate(values):
                if value != self.values[r]:
                    self.values[r], self.last_change[r] = value, now
            self.last_ok = now

    def unresponsive(self) -> tuple[list[int], bool]:
        """Ranks whose counter has not moved for a window, and whether the store itself stopped answering."""
        now = time.monotonic()
        if now - self.last_ok > self.window:
            return [0], True
        return [r for r in range(self.world_size) if r != self.rank and now - self.last_change[r] > self.window], False

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * self.interval)


class TorchDistributedCommunicator:
    """Collectives among the ranks of one job on a torch.distributed backend ("gloo", "nccl").

    ``device`` is the transport's device: tensors elsewhere are copied there
    and back. ``all_reduce`` and ``broadcast`` work in place and return the
    tensor they were given; ``all_gather`` returns one tensor per rank on the
    caller's device. Every rank must call the same collectives in the same
    order with tensors of the same shape and dtype.
    """

    def __init__(self, backend: str, rendezvous: Rendezvous, timeouts: Timeouts = Timeouts(), *,
                 device: str = "cpu", heartbeat: bool = True) -> None:
        self.backend = backend
        self.rendezvous = rendezvous
        self.timeouts = timeouts
        self.rank, self.world_size, self.local_rank = rendezvous.rank, rendezvous.world_size, rendezvous.local_rank
        self.device = device
        self._transport = torch.device(device)
        self._wire: dict[torch.dtype, torch.dtype] = {}
        self._broken = ""
        self._closed = False
        self._owns_group = False
        self._store: Any = None
        self._heartbeat: _Heartbeat | None = None
        self._prefix = f"mistralrs/{rendezvous.namespace}/"
        if not dist.is_available():
            raise ConfigError("this torch is built without torch.distributed: install a torch build that has it "
                              "(PyPI's wheels do)")
        if dist.is_initialized():
            self._adopt()
        else:
            self._start(heartbeat)
        atexit.register(self.close)
        self._probe_dtypes()

    # -- start-up ---------------------------------------------------------------------------------

    def _adopt(self) -> None:
        # The program created the default group itself (torchrun scripts often do): use it, as long as it
        # describes the same job, but leave it to the program to destroy.
        backend, rank, size = str(dist.get_backend()), dist.get_rank(), dist.get_world_size()
        if backend != self.backend or rank != self.rank or size != self.world_size:
            raise ConfigError(f"torch.distributed is already initialized with backend {backend}, rank {rank} of {size}, "
                              f"but {self.rendezvous.source} describes backend {self.backend}, rank {self.rank} of "
                              f"{self.world_size}: create the communicator before calling init_process_group, "
                              "or make both agree")

    def _start(self, heartbeat: bool) -> None:
        r = self.rendezvous
        if r.world_size == 1:
            self._store = dist.HashStore()  # a world of one needs no network
        else:
            self._store = self._connect()
            self._join()
            if heartbeat:
                interval = min(1.0, max(0.05, self.timeouts.collective / 10))
                self._heartbeat = _Heartbeat(self._connect_host(), r.master_port, self._prefix, r.rank, r.world_size,
                                             interval)
        started = time.monotonic()
        try:
            dist.init_process_group(self.backend, store=dist.PrefixStore(self._prefix + "pg", self._store),
                                    rank=r.rank, world_size=r.world_size, timeout=_delta(self.timeouts.collective))
        except RuntimeError as exc:
            raise self._failure(f"connecting the {self.backend} process group", exc, started) from None
        self._owns_group = True

    def _connect_host(self) -> str:
        r = self.rendezvous
        # Rank 0 listening on every interface reaches its own store through loopback.
        return "127.0.0.1" if r.hosts_store and is_wildcard(r.master_addr) else r.master_addr.strip("[]")

    def _connect(self) -> Any:
        r = self.rendezvous
        timeout = _delta(self.timeouts.rendezvous)
        if not r.hosts_store:
            try:
                return dist.TCPStore(r.master_addr.strip("[]"), r.master_port, None, False, timeout)
            except RuntimeError as exc:
                raise CollectiveError(
                    f"rank {r.rank} of {r.world_size} could not reach the rendezvous store of rank 0 at "
                    f"{r.master_addr}:{r.master_port} ({r.source}) within {self.timeouts.rendezvous:g}s "
                    f"({RENDEZVOUS_TIMEOUT_VAR}): {_first_line(exc)}: start rank 0, check {r.addr_name} and "
                    f"{r.port_name}, and that no firewall blocks port {r.master_port} on rank 0's machine",
                    rank=r.rank, peers=[0], timeout=self.timeouts.rendezvous) from None
        fd = self._listen()
        try:
            return dist.TCPStore(self._connect_host(), r.master_port, None, True, timeout, wait_for_workers=False,
                                 master_listen_fd=fd)
        except RuntimeError as exc:
            if fd is not None:
                _close_quietly(fd)
            if "EADDRINUSE" in str(exc) or "in use" in str(exc).lower():
                raise self._port_in_use() from None
            raise ConfigError(f"rank 0 could not start the rendezvous store on {r.master_addr}:{r.master_port} "
                              f"({r.source}): {_first_line(exc)}: check {r.addr_name} and {r.port_name}") from None

    def _listen(self) -> int | None:
        """A listening socket bound to the configured address, for the store to adopt (None: every interface)."""
        r = self.rendezvous
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
        r = self.rendezvous
        return ConfigError(f"{r.port_name}={r.master_port} ({r.source}) is already in use on {r.master_addr}: "
                           f"another job, or an earlier run still alive, holds it: pick a free port for "
                           f"{r.port_name}, or stop the process that holds it (`ss -ltnp 'sport = :{r.master_port}'` "
                           "shows it)")

    def _join(self) -> None:
        r, store, p = self.rendezvous, self._store, self._prefix
        claims = store.add(f"{p}rank/{r.rank}", 1)
        if claims > 1:
            raise ConfigError(f"rank {r.rank} is claimed by {claims} processes ({r.source}): give every process its "
                              f"own rank, 0..{r.world_size - 1}")
        store.set(f"{p}world/{r.rank}", str(r.world_size))
        store.add(f"{p}hb/{r.rank}", 1)
        keys = [f"{p}rank/{k}" for k in range(r.world_size)]
        try:
            store.wait(keys, _delta(self.timeouts.rendezvous))
        except RuntimeError as exc:
            try:
                missing = [k for k, key in enumerate(keys) if not store.check([key])]
            except RuntimeError:
                missing = [0]  # the store itself went away with its host
            raise CollectiveError(
                f"rank {r.rank} of {r.world_size}: the rendezvous at {r.master_addr}:{r.master_port} ({r.source}) "
                f"timed out after {self.timeouts.rendezvous:g}s ({RENDEZVOUS_TIMEOUT_VAR}): "
                f"rank{'s' if len(missing) != 1 else ''} {', '.join(map(str, missing))} never joined "
                f"({_first_line(exc)}): start every rank with its own rank number and the same "
                f"{r.addr_name}/{r.port_name}, or raise {RENDEZVOUS_TIMEOUT_VAR}",
                rank=r.rank, peers=missing, timeout=self.timeouts.rendezvous) from None
        worlds = [int(v) for v in store.multi_get([f"{p}world/{k}" for k in range(r.world_size)])] \
            if hasattr(store, "multi_get") else [int(store.get(f"{p}world/{k}")) for k in range(r.world_size)]
        other = {k: w for k, w in enumerate(worlds) if w != r.world_size}
        if other:
            raise ConfigError(f"the ranks disagree on the world size: this rank {r.rank} ({r.source}) has "
                              f"{r.world_size}, " + ", ".join(f"rank {k} has {w}" for k, w in other.items())
                              + ": give every rank the same world size")

    def _probe_dtypes(self) -> None:
        # An honest capability check at start-up (a collective every rank makes together): a dtype the
        # transport refuses, or reduces wrongly, travels as float32 from then on.
        for dtype in _PROBED:
            t = torch.ones(2, dtype=dtype, device=self._transport)
            started = time.monotonic()
            try:
                dist.all_reduce(t)
            except RuntimeError as exc:
                text = str(exc).lower()
                if "type" in text and not any(w in text for w in ("timed out", "connection", "closed")):
                    self._wire[dtype] = torch.float32
                    continue
                error = self._failure(f"probing {str(dtype)[6:]} all_reduce", exc, started)
                self._broken = str(error)
                raise error from None
            if not bool((t.float() == self.world_size).all()):
                self._wire[dtype] = torch.float32

    # -- collectives --------------------------------------------------------------------------------

    @property
    def wire_dtypes(self) -> dict[str, str]:
        """Dtypes sent as another dtype because the transport cannot reduce them (empty when all are native)."""
        return {str(k)[6:]: str(v)[6:] for k, v in self._wire.items()}

    def _staged(self, tensor: torch.Tensor) -> torch.Tensor:
        work = tensor
        if work.device != self._transport:
            work = work.to(self._transport)
        if work.dtype in self._wire:
            work = work.to(self._wire[work.dtype])
        return work if work.is_contiguous() else work.contiguous()

    def _run(self, what: Callable[[], str], action: Callable[[], Any]) -> None:
        # ``what`` describes the call only when something goes wrong: formatting it on every call would
        # cost more than the Python side of a small all_reduce.
        if self._broken or self._closed:
            reason = (f"this communicator failed earlier and its connections are gone ({self._broken})"
                      if self._broken else "the communicator is closed")
            raise CollectiveError(f"rank {self.rank}: {what()} refused: {reason}", rank=self.rank,
                                  timeout=self.timeouts.collective)
        started = time.monotonic()
        try:
            action()
        except RuntimeError as exc:  # torch.distributed's errors (DistError and gloo/NCCL failures) are RuntimeErrors
            error = self._failure(what(), exc, started)
            self._broken = str(error)
            raise error from None

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        reduce_op = _REDUCE_OPS.get(op)
        if reduce_op is None:
            raise UnsupportedCallError(f"all_reduce op {op!r} is not one of {', '.join(_REDUCE_OPS)}")
        work = self._staged(tensor)
        self._run(lambda: f"all_reduce({op}) of {_describe(tensor)}", lambda: dist.all_reduce(work, op=reduce_op))
        if work is not tensor:
            tensor.copy_(work)
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        work = self._staged(tensor)
        parts = [torch.empty_like(work) for _ in range(self.world_size)]
        self._run(lambda: f"all_gather of {_describe(tensor)}", lambda: dist.all_gather(parts, work))
        if work is tensor:
            return parts
        return [p.to(device=tensor.device, dtype=tensor.dtype) for p in parts]

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        if not 0 <= src < self.world_size:
            raise UnsupportedCallError(f"broadcast src={src} is outside ranks 0..{self.world_size - 1}")
        work = self._staged(tensor)
        self._run(lambda: f"broadcast from rank {src} of {_describe(tensor)}", lambda: dist.broadcast(work, src))
        if work is not tensor:
            tensor.copy_(work)
        return tensor

    def barrier(self) -> None:
        # An all_reduce of one element: dist.barrier() on NCCL guesses a device and warns about it.
        t = torch.zeros(1, device=self._transport)
        self._run(lambda: "barrier", lambda: dist.all_reduce(t))

    # -- failures -----------------------------------------------------------------------------------

    def _failure(self, what: str, exc: BaseException, started: float) -> CollectiveError:
        elapsed = time.monotonic() - started
        peers, store_gone = self._diagnose()
        r, timeout = self.rendezvous, self.timeouts.collective
        if store_gone:
            who = (f"rank 0 stopped responding: the rendezvous store it hosts at {r.master_addr}:{r.master_port} "
                   "does not answer (rank 0 crashed, was killed or is frozen)")
        elif peers:
            who = (f"rank{'s' if len(peers) > 1 else ''} {', '.join(map(str, peers))} stopped responding (no "
                   f"heartbeat for over {self._heartbeat.window if self._heartbeat else 0:.1f}s: crashed, killed "
                   "or frozen)")
        elif self._heartbeat is not None:
            who = ("every rank still answers heartbeats, so a peer is stuck or too slow, or the network drops "
                   f"{self.backend}'s connections between the machines")
        else:
            who = "a peer failed (no heartbeat here to tell which)"
        return CollectiveError(
            f"rank {self.rank} of {self.world_size}: {what} failed after {elapsed:.1f}s (collective timeout "
            f"{timeout:g}s, {COLLECTIVE_TIMEOUT_VAR}): {who} ({self.backend}: {_first_line(exc)}): check the "
            f"output of the rank(s) named and restart all ranks; raise {COLLECTIVE_TIMEOUT_VAR} if a rank is "
            "legitimately slower", rank=self.rank, peers=peers, timeout=timeout)

    def _diagnose(self) -> tuple[list[int], bool]:
        beat = self._heartbeat
        if beat is None:
            return [], False
        # A killed neighbour is noticed at once, before its counter has had time to go stale: watch one window.
        deadline = time.monotonic() + beat.window + beat.interval
        while True:
            peers, store_gone = beat.unresponsive()
            if peers or time.monotonic() >= deadline:
                return peers, store_gone
            time.sleep(min(0.05, beat.interval))

    # -- shutdown -------------------------------------------------------------------------------------

    def close(self) -> None:
        """Leave the job: stop the heartbeat, let the store host wait briefly for the others, free the group.

        Called at exit. A broken communicator skips the goodbyes and the group teardown, which could wait
        on dead peers: the process only has to exit.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        if self._heartbeat is not None:
            self._heartbeat.stop()
        store = self._store
        if store is not None and self.world_size > 1 and not self._broken:
            try:
                store.add(self._prefix + "bye", 1)
                if self.rendezvous.hosts_store:
                    # The store dies with this process: give the other ranks a moment to stop their heartbeats
                    # first, or each would log a failed store call on its way out.
                    deadline = time.monotonic() + min(10.0, self.timeouts.collective)
                    while store.add(self._prefix + "bye", 0) < self.world_size and time.monotonic() < deadline:
                        time.sleep(0.02)
            except RuntimeError:
                pass  # the store host is already gone: nobody is left to wait for
        if self._owns_group and not self._broken and dist.is_initialized():
            dist.destroy_process_group()
        self._store = None

    def __repr__(self) -> str:
        state = "broken" if self._broken else "closed" if self._closed else "open"
        return (f"TorchDistributedCommunicator({self.backend}, rank {self.rank} of {self.world_size}, "
                f"{self.rendezvous.source}, {state})")


def _describe(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype)[6:]}{list(tensor.shape)} on {tensor.device}"


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
