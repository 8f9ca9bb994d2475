"""The single-process communicator: world size 1, every collective is the identity."""

from __future__ import annotations

from collections.abc import Mapping

import torch

_OPS = ("sum", "max")


class SingleProcessCommunicator:
    """Rank 0 of a world of one."""

    rank = 0
    world_size = 1

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if op not in _OPS:
            from mistralrs_torch._errors import UnsupportedCallError

            raise UnsupportedCallError(f"all_reduce op {op!r} is not one of {', '.join(_OPS)}")
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return [tensor]

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        if src != 0:
            from mistralrs_torch._errors import UnsupportedCallError

            raise UnsupportedCallError(f"broadcast src={src} is outside ranks 0..0 of a single process")
        return tensor

    def barrier(self) -> None:
        return None


class SingleProcessCollectives:
    """The built-in collective backend, used when no collectives feature is active."""

    name = "cpu-single-process"
    feature = "cpu"
    dispatch_priority = -1000

    def communicator(self, environ: Mapping[str, str]) -> SingleProcessCommunicator:
        return SingleProcessCommunicator()
