"""One rank of the ring tests, run as a script by test_ring_multiprocess.py (not collected by pytest).

    python _ring_worker.py collectives [DEV]  every collective, dtype and layout, checked on each rank, with
                                              tensors on DEV (default cpu; cuda/mps go through host memory)
    python _ring_worker.py fault VICTIM HOW   all_reduce in a loop; rank VICTIM kills itself (HOW=kill)
                                              or is stopped by the test (HOW=stop)
    python _ring_worker.py join               only the start-up: a CollectiveError from it is the RESULT,
                                              with the seconds the rendezvous took (it starts once the
                                              file RING_WORKER_GO names exists, when that is set)

The rank's configuration comes from RING_CONFIG, as in production. A rank
prints one JSON line prefixed RESULT; exit status 0 (collectives passed),
3 (CollectiveError caught, as the fault tests expect) or 1 (anything else).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import Any

import torch

from mistralrs_torch import CollectiveError, Runtime, UnsupportedCallError

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: Relative tolerance of a sum of 4 terms rounded once per partial sum, against the float64 reference.
TOLERANCE = {torch.float32: 1e-6, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _data(rank: int, n: int, dtype: torch.dtype, device: str = "cpu") -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(100 + rank), dtype=torch.float64).to(device, dtype)


def _close(got: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> float:
    error = float((got.cpu().double() - expected).abs().max() / expected.abs().max())
    assert error <= TOLERANCE[dtype], f"{dtype}: relative error {error:.2e} > {TOLERANCE[dtype]:.0e}"
    return error


def collectives(comm: Any, device: str) -> dict[str, object]:
    rank, world = comm.rank, comm.world_size
    report: dict[str, object] = {"rank": rank, "world": world, "wire": comm.wire_dtypes}
    torch.set_default_device(device)  # every tensor below is made on the device under test
    for dtype in DTYPES:
        name = str(dtype)[6:]
        # Small integers: exact in every dtype, so these must match bit for bit.
        t = (torch.arange(33) % 7 + rank).to(dtype)
        assert comm.all_reduce(t) is t
        assert torch.equal(t, (torch.arange(33) % 7 * world + sum(range(world))).to(dtype)), (name, t)
        t = (torch.arange(33) % 5 + 10 * rank).to(dtype)
        comm.all_reduce(t, "max")
        assert torch.equal(t, (torch.arange(33) % 5 + 10 * (world - 1)).to(dtype)), (name, "max", t)
        parts = comm.all_gather(torch.full((2, 3), float(rank), dtype=dtype))
        assert [p.dtype for p in parts] == [dtype] * world
        assert [float(p[0, 0]) for p in parts] == [float(r) for r in range(world)], (name, parts)
        b = torch.full((5,), float(rank), dtype=dtype)
        assert comm.broadcast(b, world - 1) is b
        assert torch.equal(b, torch.full((5,), float(world - 1), dtype=dtype)), (name, "broadcast", b)
        # A strided view is reduced in place too.
        base = torch.zeros(4, 6, dtype=dtype)
        view = base[:, ::2]
        view.fill_(rank + 1)
        comm.all_reduce(view)
        assert torch.equal(base[:, ::2], torch.full((4, 3), float(sum(range(1, world + 1))), dtype=dtype))
        assert torch.equal(base[:, 1::2], torch.zeros(4, 3, dtype=dtype)), "the view's neighbours were written"
        # Random data: against the float64 sum of every rank's data, regenerated here from their seeds.
        n = 1 << 16
        expected = sum(_data(r, n, dtype).double() for r in range(world))
        got = comm.all_reduce(_data(rank, n, dtype, device))
        assert got.device.type == torch.device(device).type  # back where it came from
        report[f"{name} error"] = _close(got, expected, dtype)
    # The float32 detour the communicator takes for a dtype its transport cannot reduce, forced here.
    comm._wire[torch.bfloat16] = torch.float32
    expected = sum(_data(r, 1 << 16, torch.bfloat16).double() for r in range(world))
    got = comm.all_reduce(_data(rank, 1 << 16, torch.bfloat16, device))
    assert got.dtype == torch.bfloat16
    # Summed in float32 and rounded once: within half a bfloat16 step of the exact sum.
    report["bf16 via fp32 error"] = _close(got, expected, torch.bfloat16)
    assert torch.equal(got.cpu(), expected.float().to(torch.bfloat16)) or report["bf16 via fp32 error"] < 8e-3
    del comm._wire[torch.bfloat16]
    for bad in (lambda: comm.all_reduce(torch.ones(2), "min"), lambda: comm.broadcast(torch.ones(2), world)):
        try:
            bad()
        except UnsupportedCallError as exc:
            assert "min" in str(exc) or f"0..{world - 1}" in str(exc), exc
        else:
            raise AssertionError("an unsupported call was accepted")
    comm.barrier()
    torch.set_default_device("cpu")
    return report


def fault(comm: Any, victim: int, how: str) -> None:
    rank = comm.rank
    comm.barrier()
    if rank == victim and how == "kill":
        threading.Thread(target=lambda: (time.sleep(0.5), os.kill(os.getpid(), signal.SIGKILL)), daemon=True).start()
    print("LOOPING", flush=True)
    t = torch.ones(1 << 18)
    started = time.monotonic()
    try:
        while time.monotonic() - started < 120:
            comm.all_reduce(t)
            t.fill_(1.0)
    except CollectiveError as exc:
        print("RESULT " + json.dumps({"rank": rank, "peers": list(exc.peers), "timeout": exc.timeout,
                                      "error_rank": exc.rank, "message": str(exc)}), flush=True)
        # A second collective on the broken communicator fails at once, and says why.
        try:
            comm.barrier()
        except CollectiveError as again:
            assert "failed earlier" in str(again), again
        sys.exit(3)
    sys.exit(4)


def join(runtime: Runtime) -> None:
    go = os.environ.get("RING_WORKER_GO")  # a file the test creates when this rank may start to join
    while go and not os.path.exists(go):
        time.sleep(0.05)
    started = time.monotonic()
    try:
        runtime.communicator()
    except CollectiveError as exc:
        print("RESULT " + json.dumps({"rank": exc.rank, "peers": list(exc.peers), "timeout": exc.timeout,
                                      "message": str(exc), "waited": time.monotonic() - started}), flush=True)
        sys.exit(3)
    sys.exit(4)


def main() -> None:
    runtime = Runtime.create()
    if sys.argv[1] == "join":
        join(runtime)
    comm = runtime.communicator()
    assert type(comm).__name__ == "TorchDistributedCommunicator", comm
    if sys.argv[1] == "collectives":
        print("RESULT " + json.dumps(collectives(comm, sys.argv[2] if len(sys.argv) > 2 else "cpu")), flush=True)
    else:
        fault(comm, int(sys.argv[2]), sys.argv[3])


if __name__ == "__main__":
    main()
