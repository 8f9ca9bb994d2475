"""Device-gated markers (gpu and mps tests skip cleanly where the hardware is absent), and ranks as threads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest


def _available(marker: str) -> tuple[bool, str]:
    import torch  # only when a gated test was collected: keeps light-import tests light

    if marker == "gpu":
        return torch.cuda.is_available(), "needs an NVIDIA GPU with a CUDA build of torch"
    return torch.backends.mps.is_available(), "needs an Apple GPU through torch MPS"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for marker in ("gpu", "mps"):
        gated = [item for item in items if item.get_closest_marker(marker)]
        if not gated:
            continue
        ok, why = _available(marker)
        if not ok:
            for item in gated:
                item.add_marker(pytest.mark.skip(reason=why))


class _ThreadWorld:
    """N ranks as threads of this process; collectives are exact (the same sum in the same order everywhere)."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.barrier = threading.Barrier(world, timeout=60)
        self.slots: list[Any] = [None] * world

    def exchange(self, rank: int, tensor: Any) -> list[Any]:
        self.slots[rank] = tensor.clone()
        self.barrier.wait()
        parts = list(self.slots)
        self.barrier.wait()
        return parts

    def run(self, work: Callable[[Any], Any]) -> list[Any]:
        results: list[Any] = [None] * self.world
        errors: list[BaseException] = []

        def one(rank: int) -> None:
            try:
                results[rank] = work(_ThreadComm(self, rank))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread below
                errors.append(exc)
                self.barrier.abort()

        threads = [threading.Thread(target=one, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            first = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)] or errors
            raise first[0]
        return results


class _ThreadComm:
    """One thread rank's communicator (the Communicator protocol)."""

    def __init__(self, world: _ThreadWorld, rank: int) -> None:
        self.world, self.rank, self.world_size = world, rank, world.world

    def all_reduce(self, tensor: Any, op: str = "sum") -> Any:
        import torch

        parts = self.world.exchange(self.rank, tensor)
        total = parts[0].clone()
        for p in parts[1:]:
            total = total + p if op == "sum" else torch.maximum(total, p)
        return tensor.copy_(total)

    def all_gather(self, tensor: Any) -> list[Any]:
        return self.world.exchange(self.rank, tensor)

    def broadcast(self, tensor: Any, src: int = 0) -> Any:
        return tensor.copy_(self.world.exchange(self.rank, tensor)[src])

    def barrier(self) -> None:
        import torch

        self.world.exchange(self.rank, torch.zeros(1))


@pytest.fixture
def thread_ranks() -> Callable[[int, Callable[[Any], Any]], list[Any]]:
    """thread_ranks(world, work) -> [work(communicator) of each rank], the ranks being threads of this process.

    Exact and fast stand-ins for real ranks: what one rank raises is raised here (the others stop at their next
    collective instead of waiting).
    """
    return lambda world, work: _ThreadWorld(world).run(work)
