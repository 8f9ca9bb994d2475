"""One rank of the conformance kit's communicator check (run by `mistralrs launch`, not imported).

Each rank builds the runtime from the launch environment, takes its
communicator and checks every collective against values it can predict:
all_reduce sum and max, all_gather and broadcast in fp32, fp16 and bf16, and a
barrier. It prints one line starting with KIT and exits 0 when all held.
"""

from __future__ import annotations

import sys

import torch

from mistralrs_torch.ops import Communicator
from mistralrs_torch.runtime import Runtime


def _check(rank: int, world: int, communicator: Communicator) -> list[str]:
    problems = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        values = torch.arange(8, dtype=torch.float32) + rank  # exact in every dtype here
        summed = communicator.all_reduce(values.to(dtype).clone(), "sum").float()
        expected = torch.arange(8, dtype=torch.float32) * world + sum(range(world))
        if not torch.equal(summed, expected):
            problems.append(f"all_reduce sum {dtype}: got {summed.tolist()}, expected {expected.tolist()}")
        biggest = communicator.all_reduce(values.to(dtype).clone(), "max").float()
        if not torch.equal(biggest, torch.arange(8, dtype=torch.float32) + world - 1):
            problems.append(f"all_reduce max {dtype}: got {biggest.tolist()}")
        gathered = communicator.all_gather(values.to(dtype))
        if [g.float().tolist() for g in gathered] != [(torch.arange(8.0) + r).tolist() for r in range(world)]:
            problems.append(f"all_gather {dtype}: got {[g.float().tolist() for g in gathered]}")
        sent = communicator.broadcast(values.to(dtype).clone(), src=world - 1).float()
        if not torch.equal(sent, torch.arange(8.0) + world - 1):
            problems.append(f"broadcast from rank {world - 1} {dtype}: got {sent.tolist()}")
    communicator.barrier()
    return problems


def main() -> int:
    communicator = Runtime.create().communicator()
    rank, world = communicator.rank, communicator.world_size
    if world < 2:
        print(f"KIT rank {rank}: world size {world}: the launch did not make a multi-rank job", flush=True)
        return 1
    problems = _check(rank, world, communicator)
    print(f"KIT rank {rank}/{world}: " + ("ok" if not problems else "; ".join(problems)), flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
