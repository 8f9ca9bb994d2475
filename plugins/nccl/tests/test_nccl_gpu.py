"""NCCL on real GPUs (skipped without CUDA): a world of one on one GPU, and two ranks when two GPUs are visible."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MISTRALRS_") and k not in
            ("RING_CONFIG", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}


def test_world_size_one_on_one_gpu() -> None:
    # In a subprocess: the communicator owns torch.distributed's default group for the process's life.
    code = textwrap.dedent("""
        import torch
        from mistralrs_torch_nccl._backend import NCCLCollectives
        comm = NCCLCollectives().communicator({"MISTRALRS_MN_LOCAL_WORLD_SIZE": "1"})
        assert (comm.rank, comm.world_size, comm.device) == (0, 1, "cuda:0"), comm
        assert comm.wire_dtypes == {}, comm.wire_dtypes  # NCCL reduces float16 and bfloat16 natively
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            t = torch.arange(8, device="cuda").to(dtype)
            assert comm.all_reduce(t) is t and torch.equal(t, torch.arange(8, device="cuda").to(dtype))
            assert torch.equal(comm.all_gather(t)[0], t)
            assert comm.broadcast(t, 0) is t
            host = torch.arange(8).to(dtype)  # a CPU tensor travels through the GPU and comes back
            assert comm.all_reduce(host, "max") is host and host.device.type == "cpu"
        comm.barrier()
        comm.close()
        print("NCCL-OK")
        """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_clean_env(),
                            timeout=300, check=False)
    assert result.returncode == 0 and "NCCL-OK" in result.stdout, result.stderr[-3000:]


@pytest.mark.multiprocess
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_ranks_on_two_gpus(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = textwrap.dedent("""
        import os, torch
        from mistralrs_torch_nccl._backend import NCCLCollectives
        comm = NCCLCollectives().communicator(os.environ)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            t = torch.full((1024,), float(comm.rank + 1), device=comm.device, dtype=dtype)
            comm.all_reduce(t)
            assert torch.equal(t, torch.full_like(t, 3.0)), (dtype, t)
            parts = comm.all_gather(torch.full((4,), float(comm.rank), device=comm.device, dtype=dtype))
            assert [float(p[0]) for p in parts] == [0.0, 1.0]
        comm.close()
        print("RANK-OK", comm.rank)
        """)
    procs = []
    try:
        for rank in range(2):
            env = {**_clean_env(), "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                   "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                   "MISTRALRS_COLLECTIVE_TIMEOUT": "60"}
            procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, start_new_session=True))
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()
    for rank, (out, err) in enumerate(outputs):
        assert procs[rank].returncode == 0 and f"RANK-OK {rank}" in out, err[-3000:]
