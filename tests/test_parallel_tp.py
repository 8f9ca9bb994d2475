"""Tensor parallelism: slices read straight from safetensors (spied on), and the same output as one process.

In this process, ranks are simulated by threads exchanging tensors (exact and
fast); the multiprocess tests run 2 and 4 real ranks over ring (gloo on
loopback) and compare with the single-process run on the built-in communicator.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import mistralrs_torch.runtime._loading as loading
from mistralrs_torch import ConfigError, Runtime, UnsupportedCallError
from mistralrs_torch.generic import SingleProcessCommunicator
from mistralrs_torch.parallel import (
    ColumnParallelLinear,
    ParallelMLP,
    RowParallelLinear,
    load_replicated,
    shard_range,
    tensor_shapes,
)

HIDDEN, INTERMEDIATE, TOKENS = 48, 128, 5


def write_mlp(path: Path, *, bias: bool = True, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    tensors = {
        "mlp.gate_proj.weight": torch.randn(INTERMEDIATE, HIDDEN, generator=g) / HIDDEN**0.5,
        "mlp.up_proj.weight": torch.randn(INTERMEDIATE, HIDDEN, generator=g) / HIDDEN**0.5,
        "mlp.down_proj.weight": torch.randn(HIDDEN, INTERMEDIATE, generator=g) / INTERMEDIATE**0.5,
        "norm.weight": 1 + 0.1 * torch.randn(HIDDEN - 1, generator=g),  # odd length: uneven replicated slices
    }
    if bias:
        tensors.update({"mlp.gate_proj.bias": torch.randn(INTERMEDIATE, generator=g),
                        "mlp.up_proj.bias": torch.randn(INTERMEDIATE, generator=g),
                        "mlp.down_proj.bias": torch.randn(HIDDEN, generator=g)})
    tensors = {k: v.to(dtype) for k, v in tensors.items()}
    save_file(tensors, str(path))
    return tensors


def reference_mlp(t: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    def lin(name: str, v: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(v.double(), t[f"mlp.{name}.weight"].double(),
                                          None if f"mlp.{name}.bias" not in t else t[f"mlp.{name}.bias"].double())

    return lin("down_proj", torch.nn.functional.silu(lin("gate_proj", x)) * lin("up_proj", x))


class _ThreadWorld:
    """N ranks as threads of this process; collectives are exact (the same sum in the same order everywhere)."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.barrier = threading.Barrier(world, timeout=30)
        self.slots: list[Any] = [None] * world

    def exchange(self, rank: int, tensor: torch.Tensor) -> list[torch.Tensor]:
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
            raise errors[0]
        return results


class _ThreadComm:
    def __init__(self, world: _ThreadWorld, rank: int) -> None:
        self.world, self.rank, self.world_size = world, rank, world.world

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        parts = self.world.exchange(self.rank, tensor)
        total = parts[0].clone()
        for p in parts[1:]:
            total = total + p if op == "sum" else torch.maximum(total, p)
        return tensor.copy_(total)

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return self.world.exchange(self.rank, tensor)

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        return tensor.copy_(self.world.exchange(self.rank, tensor)[src])

    def barrier(self) -> None:
        self.world.exchange(self.rank, torch.zeros(1))


class _Reads:
    """Every read through safetensors' API: ("whole", name, shape) or ("slice", name, shape, full shape)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.log: list[tuple] = []

    def add(self, *entry: Any) -> None:
        with self.lock:
            self.log.append(entry)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> _Reads:
    spy = _Reads()
    real = loading.safe_open

    class File:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.file = real(*args, **kwargs)

        def __enter__(self) -> File:
            self.file.__enter__()
            return self

        def __exit__(self, *exc: Any) -> Any:
            return self.file.__exit__(*exc)

        def keys(self) -> list[str]:
            return self.file.keys()

        def get_tensor(self, name: str) -> torch.Tensor:
            tensor = self.file.get_tensor(name)
            spy.add("whole", name, tuple(tensor.shape))
            return tensor

        def get_slice(self, name: str) -> Any:
            view = self.file.get_slice(name)

            class Slice:
                def get_shape(self) -> list[int]:
                    return view.get_shape()

                def __getitem__(self, index: Any) -> torch.Tensor:
                    tensor = view[index]
                    spy.add("slice", name, tuple(tensor.shape), tuple(view.get_shape()))
                    return tensor

            return Slice()

    monkeypatch.setattr(loading, "safe_open", File)
    return spy


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return Runtime.create(environ={})


def test_shards_and_shapes(tmp_path: Path) -> None:
    assert [shard_range(128, r, 4) for r in range(4)] == [(0, 32), (32, 64), (64, 96), (96, 128)]
    with pytest.raises(ConfigError, match="size 128, which 3 ranks cannot split evenly"):
        shard_range(128, 0, 3)
    tensors = write_mlp(tmp_path / "w.safetensors")
    assert tensor_shapes(tmp_path / "w.safetensors") == {k: tuple(v.shape) for k, v in tensors.items()}
    (tmp_path / "junk").write_bytes(b"\x01")
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        tensor_shapes(tmp_path / "junk")


@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("bias", [True, False])
def test_parallel_mlp_matches_the_single_process_block(tmp_path: Path, runtime: Runtime, reads: _Reads, world: int,
                                                       bias: bool) -> None:
    path = tmp_path / "w.safetensors"
    tensors = write_mlp(path, bias=bias)
    x = torch.randn(TOKENS, HIDDEN, generator=torch.Generator().manual_seed(9))

    def rank(comm: Any) -> torch.Tensor:
        return ParallelMLP.from_safetensors(runtime, comm, path, "mlp.", device="cpu")(x)

    outputs = _ThreadWorld(world).run(rank)
    expected = reference_mlp(tensors, x)
    for out in outputs:  # every rank holds the full output after the row-parallel all_reduce
        assert out.shape == (TOKENS, HIDDEN)
        assert torch.allclose(out.double(), expected, atol=2e-5, rtol=1e-5)
    if world > 1:
        assert all(torch.equal(out, outputs[0]) for out in outputs)
        assert not [r for r in reads.log if r[0] == "whole"], reads.log
        # Together the ranks read every sharded tensor exactly once.
        for name, tensor in tensors.items():
            if not name.startswith("mlp."):
                continue
            read = [r for r in reads.log if r[1] == name]
            assert len(read) == world and all(math.prod(r[2]) == tensor.numel() // world for r in read), read


def test_no_rank_reads_a_whole_tensor_even_a_replicated_one(tmp_path: Path, reads: _Reads) -> None:
    path = tmp_path / "w.safetensors"
    tensors = write_mlp(path)
    parts = _ThreadWorld(4).run(lambda comm: load_replicated(path, "norm.weight", comm, "cpu"))
    assert all(torch.equal(p, tensors["norm.weight"]) for p in parts)
    rows = sorted(r[2][0] for r in reads.log)
    assert [r[0] for r in reads.log] == ["slice"] * 4 and rows == [11, 12, 12, 12] and sum(rows) == HIDDEN - 1


def test_gather_output_and_input_checks(tmp_path: Path, runtime: Runtime) -> None:
    path = tmp_path / "w.safetensors"
    tensors = write_mlp(path)
    x = torch.randn(TOKENS, HIDDEN)

    def rank(comm: Any) -> tuple[torch.Tensor, RowParallelLinear]:
        up = ColumnParallelLinear.from_safetensors(runtime, comm, path, "mlp.up_proj.weight", "mlp.up_proj.bias",
                                                   gather_output=True, device="cpu")
        down = RowParallelLinear.from_safetensors(runtime, comm, path, "mlp.down_proj.weight", device="cpu")
        return up(x), down

    (full, down), _ = _ThreadWorld(2).run(rank)
    expected = torch.nn.functional.linear(x, tensors["mlp.up_proj.weight"], tensors["mlp.up_proj.bias"])
    assert torch.allclose(full, expected, atol=1e-5)
    with pytest.raises(UnsupportedCallError, match="takes its 64 of 128 input features, got 128"):
        down(torch.randn(TOKENS, INTERMEDIATE))


def test_a_world_size_that_does_not_divide_the_weights_is_a_config_error(tmp_path: Path, runtime: Runtime) -> None:
    path = tmp_path / "w.safetensors"
    write_mlp(path)
    with pytest.raises(ConfigError, match=r"dimension 0 of 'mlp.gate_proj.weight' .* has size 128, which 3 ranks"):
        _ThreadWorld(3).run(lambda comm: ParallelMLP.from_safetensors(runtime, comm, path, "mlp.", device="cpu"))
    with pytest.raises(ConfigError, match=r"has no tensor 'mlp.nope.weight'"):
        ColumnParallelLinear.from_safetensors(runtime, SingleProcessCommunicator(), path, "mlp.nope.weight")


def test_launched_ranks_without_a_collective_feature_are_refused() -> None:
    launched = {"RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    runtime = Runtime.create(environ={**launched, "MISTRALRS_FEATURES": "none"})
    with pytest.raises(ConfigError) as raised:
        runtime.communicator()
    assert "WORLD_SIZE=4" in str(raised.value) and "nccl, ring" in str(raised.value)
    assert Runtime.create(environ={"MISTRALRS_FEATURES": "none"}).communicator().world_size == 1


# -- real ranks over ring --------------------------------------------------------------------------------

WORKER = """
import json, sys, torch
import mistralrs_torch.runtime._loading as loading
from mistralrs_torch import Runtime
from mistralrs_torch.parallel import ParallelMLP, load_replicated

weights, x_path, out_dir = sys.argv[1:4]
log, real = [], loading.safe_open

class File:  # records every read through safetensors' API
    def __init__(self, *a, **k): self.file = real(*a, **k)
    def __enter__(self): self.file.__enter__(); return self
    def __exit__(self, *e): return self.file.__exit__(*e)
    def keys(self): return self.file.keys()
    def get_tensor(self, name):
        t = self.file.get_tensor(name); log.append(["whole", name, list(t.shape)]); return t
    def get_slice(self, name):
        view = self.file.get_slice(name)
        class Slice:
            def get_shape(self): return view.get_shape()
            def __getitem__(self, index):
                t = view[index]; log.append(["slice", name, list(t.shape)]); return t
        return Slice()

loading.safe_open = File
runtime = Runtime.create()
comm = runtime.communicator()
mlp = ParallelMLP.from_safetensors(runtime, comm, weights, "mlp.", device="cpu")
norm = load_replicated(weights, "norm.weight", comm, "cpu")
out = mlp(torch.load(x_path))
torch.save({"out": out, "norm": norm}, f"{out_dir}/rank{comm.rank}.pt")
json.dump({"rank": comm.rank, "world": comm.world_size, "reads": log,
           "backend": type(runtime.collective_backends[0]).__name__}, open(f"{out_dir}/rank{comm.rank}.json", "w"))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def spawn() -> Iterator[Callable[..., list[subprocess.Popen[str]]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(argv: list[str], envs: list[dict[str, str]]) -> list[subprocess.Popen[str]]:
        for env in envs:
            procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          start_new_session=True))
        return procs

    yield start
    for p in procs:  # however the test ended, no rank outlives it
        try:
            os.killpg(p.pid, 9)
        except ProcessLookupError:
            pass
        p.communicate()


@pytest.mark.multiprocess
@pytest.mark.parametrize("world", [2, 4])
def test_tp_over_ring_matches_the_single_process_run(tmp_path: Path, runtime: Runtime, spawn: Callable, world: int
                                                     ) -> None:
    from mistralrs_torch_ring._config import ring_config_set, write_ring_configs

    weights = tmp_path / "w.safetensors"
    tensors = write_mlp(weights)
    x = torch.randn(TOKENS, HIDDEN, generator=torch.Generator().manual_seed(11))
    torch.save(x, tmp_path / "x.pt")
    (tmp_path / "worker.py").write_text(textwrap.dedent(WORKER))
    single = ParallelMLP.from_safetensors(runtime, SingleProcessCommunicator(), weights, "mlp.", device="cpu")(x)
    configs = write_ring_configs(tmp_path / "ring", ring_config_set(world, master_port=_free_port()))
    base = {k: v for k, v in os.environ.items() if not k.startswith("MISTRALRS_") and k not in
            ("RING_CONFIG", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PYTHONPATH")}
    envs = [{**base, "RING_CONFIG": str(c), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
             "MISTRALRS_COLLECTIVE_TIMEOUT": "60", "MISTRALRS_RENDEZVOUS_TIMEOUT": "120"} for c in configs]
    procs = spawn([sys.executable, str(tmp_path / "worker.py"), str(weights), str(tmp_path / "x.pt"), str(tmp_path)],
                  envs)
    deadline = time.monotonic() + 240
    for rank, p in enumerate(procs):
        _, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
        assert p.returncode == 0, f"rank {rank}: {err[-3000:]}"
    for rank in range(world):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(result["out"], single, atol=1e-5, rtol=1e-5), (result["out"] - single).abs().max()
        assert torch.equal(result["norm"], tensors["norm.weight"])
        info = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert (info["rank"], info["world"], info["backend"]) == (rank, world, "GlooCollectives")
        assert [r for r in info["reads"] if r[0] == "whole"] == [], info["reads"]
        for _kind, name, shape in info["reads"]:  # a 1/world share of every tensor, never more
            assert math.prod(shape) <= math.ceil(tensors[name].numel() / world), (name, shape)
