"""A communicator on torch.distributed, shared by the collective plugins (gloo for ring, NCCL for nccl).

torch.distributed does the work; this class adds what a server needs around it:

- a start-up bounded by MISTRALRS_RENDEZVOUS_TIMEOUT that names the ranks that
  never joined, refuses duplicate ranks and disagreeing world sizes, and turns a
  port in use into a ConfigError (:mod:`._startup`), with torch's own messages in
  a log file rather than on the terminal (:mod:`._native_log`);
- finite timeouts, and a failed collective turned into a CollectiveError on
  every surviving rank that names the unresponsive rank(s) and the timeout,
  from heartbeats each rank keeps in the rendezvous store (:mod:`._heartbeat`,
  :mod:`._diagnosis`);
- tensors on another device than the transport's (CUDA or MPS tensors for
  gloo, CPU tensors for NCCL) staged through the transport device, and dtypes
  the transport cannot reduce (found by a probe at start-up) sent as float32.
"""

from __future__ import annotations

import atexit
import os
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from mistralrs_torch._errors import CollectiveError, ConfigError, UnsupportedCallError
from mistralrs_torch.parallel._diagnosis import failure
from mistralrs_torch.parallel._heartbeat import Heartbeat
from mistralrs_torch.parallel._native_log import DEBUG_VAR, NativeLog
from mistralrs_torch.parallel._rendezvous import Rendezvous, Timeouts
from mistralrs_torch.parallel._startup import Startup
from mistralrs_torch.parallel._store import LEFT_AFTER_FAILURE, LEFT_CLOSED, Late, heartbeat_key, seconds, within
from mistralrs_torch.validation import env_flag

_REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
#: Dtypes a transport might not reduce; probed once at start-up (gloo in some torch builds lacks bfloat16).
_PROBED = (torch.float16, torch.bfloat16)
#: The longest a leaving rank waits on the store (its mark, rank 0's wait for the others) after a failure.
_LEAVING = 1.0


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
        self._heartbeat: Heartbeat | None = None
        self._prefix = f"mistralrs/{rendezvous.namespace}/"
        if not dist.is_available():
            raise ConfigError("this torch is built without torch.distributed: install a torch build that has it "
                              "(PyPI's wheels do)")
        # The process's own environment decides where its own descriptor 2 goes.
        with NativeLog(self.rank, not env_flag(os.environ, DEBUG_VAR)) as log:
            if dist.is_initialized():
                self._adopt()
            else:
                self._start(heartbeat, log)
            atexit.register(self.close)
            self._probe_dtypes()

    # -- start-up ---------------------------------------------------------------------------------

    def _adopt(self) -> None:
        # The program created the default group itself (torchrun scripts often do): use it, as long as it
        # describes the same job, but leave it to the program to destroy.
        backend, rank, size = str(dist.get_backend()), dist.get_rank(), dist.get_world_size()
        if backend != self.backend or rank != self.rank or size != self.world_size:
            raise ConfigError(f"torch.distributed is already initialized with backend {backend}, "
                              f"rank {rank} of {size}, "
                              f"but {self.rendezvous.source} describes backend {self.backend}, rank {self.rank} of "
                              f"{self.world_size}: create the communicator before calling init_process_group, "
                              "or make both agree")

    def _start(self, heartbeat: bool, log: NativeLog) -> None:
        r = self.rendezvous
        if r.world_size == 1:
            self._store = dist.HashStore()  # a world of one needs no network
        else:
            startup = Startup(r, self.timeouts.rendezvous, self._prefix, log.mention)
            self._store = startup.store()
            startup.join(self._store)
            if heartbeat:
                interval = min(1.0, max(0.05, self.timeouts.collective / 10))
                self._heartbeat = Heartbeat(startup.connect_host(), r.master_port, self._prefix, r.rank, r.world_size,
                                            interval)
        started = time.monotonic()
        try:
            dist.init_process_group(self.backend, store=dist.PrefixStore(self._prefix + "pg", self._store),
                                    rank=r.rank, world_size=r.world_size, timeout=seconds(self.timeouts.collective))
        except RuntimeError as exc:
            raise self._failed(f"connecting the {self.backend} process group", exc, started) from None
        self._owns_group = True

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
                raise self._failed(f"probing {str(dtype)[6:]} all_reduce", exc, started) from None
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
            raise self._failed(what(), exc, started) from None

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

    # -- failures and shutdown -------------------------------------------------------------------------

    def _failed(self, what: str, exc: BaseException, started: float) -> CollectiveError:
        """The CollectiveError for a failed collective; this rank marks itself as a survivor, not a culprit."""
        error = failure(what, exc, started, self.rendezvous, self.timeouts.collective, self.backend, self._heartbeat)
        self._broken = str(error)
        self._mark(LEFT_AFTER_FAILURE)
        return error

    def _mark(self, mark: int) -> None:
        """Tell the other ranks' heartbeats how this rank leaves (bounded: the store host may be gone)."""
        store = self._store
        if store is None or self.world_size == 1:
            return
        try:
            within(_LEAVING, lambda: store.add(heartbeat_key(self._prefix, self.rank), mark))
        except (RuntimeError, Late):
            pass  # the store host is already gone: nobody is left to tell

    def close(self) -> None:
        """Leave the job: stop the heartbeat, say so in the store, let the store host wait briefly, free the group.

        Called at exit. A broken communicator skips the group teardown, which could wait on dead peers.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if not self._broken:
            self._mark(LEFT_CLOSED)
        if self._store is not None and self.world_size > 1 and self.rendezvous.hosts_store:
            self._wait_for_the_others()
        if self._owns_group and not self._broken and dist.is_initialized():
            dist.destroy_process_group()
        self._store = None

    def _wait_for_the_others(self) -> None:
        # The store dies with this process: give the other ranks a moment to leave their mark first (so they
        # do not mistake its end for rank 0's fault), up to a heartbeat window after a failure.
        keys = [heartbeat_key(self._prefix, r) for r in range(self.world_size) if r != self.rank]
        beat = self._heartbeat
        limit = min(10.0, self.timeouts.collective) if not self._broken else \
            (beat.window + beat.interval if beat is not None else _LEAVING)
        deadline = time.monotonic() + limit
        last: dict[str, Any] = {}  # multi_get answers bytes, add answers int
        changed: dict[str, float] = {}
        try:
            while time.monotonic() < deadline:
                now = time.monotonic()
                values = self._store.multi_get(keys) if hasattr(self._store, "multi_get") else \
                    [self._store.add(k, 0) for k in keys]
                for key, value in zip(keys, values, strict=True):
                    if last.get(key) != value:
                        last[key], changed[key] = value, now
                # Done when every other rank has left its mark, or (with heartbeats) fell silent.
                quiet = beat.window if beat is not None else limit
                if all(int(last[k]) >= LEFT_CLOSED or now - changed[k] > quiet for k in keys):
                    return
                time.sleep(0.02)
        except RuntimeError:
            pass

    def __repr__(self) -> str:
        state = "broken" if self._broken else "closed" if self._closed else "open"
        return (f"TorchDistributedCommunicator({self.backend}, rank {self.rank} of {self.world_size}, "
                f"{self.rendezvous.source}, {state})")


def _describe(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype)[6:]}{list(tensor.shape)} on {tensor.device}"
