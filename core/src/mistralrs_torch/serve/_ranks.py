"""Tensor parallel serving: rank 0 decides each step's schedule and broadcasts it; every other rank follows.

Every rank runs its own :class:`~mistralrs_torch.models.Engine` over its part of the model. The engines stay in
lockstep because they are fed the same commands in the same order (requests added, requests aborted, one step
or none) and an engine is deterministic given those: request ids are handed out in order, and every sampled
request carries an explicit seed chosen on rank 0. A tick travels as JSON in two collectives: an all_reduce of
its length (every rank takes part, so a dead rank fails it within the collective timeout) and a broadcast of
its bytes. While idle, rank 0 sends empty ticks so that the followers' collectives never time out.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from mistralrs_torch._errors import CollectiveError, MistralrsError
from mistralrs_torch.models import SamplingParams

if TYPE_CHECKING:
    from mistralrs_torch.models import Engine
    from mistralrs_torch.ops import Communicator

@dataclass
class Tick:
    """One round of the engine loop: what to abort, what to add (prompt ids, sampling), then whether to step."""

    aborts: list[int] = field(default_factory=list)
    adds: list[tuple[list[int], SamplingParams]] = field(default_factory=list)
    step: bool = False
    stop: bool = False

    def encode(self) -> bytes:
        return json.dumps({"aborts": self.aborts, "adds": [[p, asdict(s)] for p, s in self.adds],
                           "step": self.step, "stop": self.stop}).encode()

    @classmethod
    def decode(cls, data: bytes) -> Tick:
        raw: dict[str, Any] = json.loads(data)
        return cls(raw["aborts"], [(p, SamplingParams(**s)) for p, s in raw["adds"]], raw["step"], raw["stop"])


def publish(communicator: Communicator, tick: Tick) -> None:
    """Rank 0: send ``tick`` to every other rank (CollectiveError when one of them is gone)."""
    data = tick.encode()
    communicator.all_reduce(torch.tensor([len(data)], dtype=torch.int64))
    communicator.broadcast(torch.frombuffer(bytearray(data), dtype=torch.uint8), src=0)


def receive(communicator: Communicator) -> Tick:
    """Any other rank: the next tick from rank 0."""
    length = communicator.all_reduce(torch.zeros(1, dtype=torch.int64))
    data = communicator.broadcast(torch.empty(int(length), dtype=torch.uint8), src=0)
    return Tick.decode(data.numpy().tobytes())


def apply(engine: Engine, tick: Tick) -> list[int | MistralrsError]:
    """Abort, then add (each add's request id, or the error that refused it): the same on every rank."""
    for request_id in tick.aborts:
        engine.abort(request_id)
    results: list[int | MistralrsError] = []
    for prompt, params in tick.adds:
        try:
            results.append(engine.add(prompt, params))
        except MistralrsError as exc:
            results.append(exc)
    return results


def follow(engine: Engine, communicator: Communicator) -> None:
    """A rank other than 0: apply rank 0's ticks until it says stop; CollectiveError when rank 0 is gone."""
    while True:
        tick = receive(communicator)
        apply(engine, tick)
        if tick.stop:
            return
        if tick.step:
            try:
                engine.step()
            except CollectiveError:
                raise
            except Exception:  # noqa: BLE001 - the engine dropped the failed batch; rank 0's engine did the same
                continue
