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
    AttentionHeads,
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
                                                       bias: bool, thread_ranks: Callable) -> None:
    path = tmp_path / "w.safetensors"
    tensors = write_mlp(path, bias=bias)
    x = torch.randn(TOKENS, HIDDEN, generator=torch.Generator().manual_seed(9))

    def rank(comm: Any) -> torch.Tensor:
        return ParallelMLP.from_safetensors(runtime, comm, path, "mlp.", device="cpu")(x)

    outputs = thread_ranks(world, rank)
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


def test_no_rank_reads_a_whole_tensor_even_a_replicated_one(tmp_path: Path, reads: _Reads,
                                                           thread_ranks: Callable) -> None:
    path = tmp_path / "w.safetensors"
    tensors = write_mlp(path)
    parts = thread_ranks(4, lambda comm: load_replicated(path, "norm.weight", comm, "cpu"))
    assert all(torch.equal(p, tensors["norm.weight"]) for p in parts)
    rows = sorted(r[2][0] for r in reads.log)
    assert [r[0] for r in reads.log] == ["slice"] * 4 and rows == [11, 12, 12, 12] and sum(rows) == HIDDEN - 1


def test_gather_output_and_input_checks(tmp_path: Path, runtime: Runtime, thread_ranks: Callable) -> None:
    path = tmp_path / "w.safetensors"
    tensors = write_mlp(path)
    x = torch.randn(TOKENS, HIDDEN)

    def rank(comm: Any) -> tuple[torch.Tensor, RowParallelLinear]:
        up = ColumnParallelLinear.from_safetensors(runtime, comm, path, "mlp.up_proj.weight", "mlp.up_proj.bias",
                                                   gather_output=True, device="cpu")
        down = RowParallelLinear.from_safetensors(runtime, comm, path, "mlp.down_proj.weight", device="cpu")
        return up(x), down

    (full, down), _ = thread_ranks(2, rank)
    expected = torch.nn.functional.linear(x, tensors["mlp.up_proj.weight"], tensors["mlp.up_proj.bias"])
    assert torch.allclose(full, expected, atol=1e-5)
    with pytest.raises(UnsupportedCallError, match="takes its 64 of 128 input features, got 128"):
        down(torch.randn(TOKENS, INTERMEDIATE))


def test_a_world_size_that_does_not_divide_the_weights_is_a_config_error(tmp_path: Path, runtime: Runtime,
                                                                        thread_ranks: Callable) -> None:
    path = tmp_path / "w.safetensors"
    write_mlp(path)
    with pytest.raises(ConfigError, match=r"dimension 0 of 'mlp.gate_proj.weight' .* has size 128, which 3 ranks"):
        thread_ranks(3, lambda comm: ParallelMLP.from_safetensors(runtime, comm, path, "mlp.", device="cpu"))
    with pytest.raises(ConfigError, match=r"has no tensor 'mlp.nope.weight'"):
        ColumnParallelLinear.from_safetensors(runtime, SingleProcessCommunicator(), path, "mlp.nope.weight")


def test_launched_ranks_without_a_collective_feature_are_refused() -> None:
    launched = {"RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    runtime = Runtime.create(environ={**launched, "MISTRALRS_FEATURES": "none"})
    with pytest.raises(ConfigError) as raised:
        runtime.communicator()
    assert "WORLD_SIZE=4" in str(raised.value) and "nccl, ring" in str(raised.value)
    assert Runtime.create(environ={"MISTRALRS_FEATURES": "none"}).communicator().world_size == 1


# -- attention heads --------------------------------------------------------------------------------------


def test_heads_split_whole_and_each_rank_keeps_the_kv_heads_its_query_heads_use() -> None:
    for heads in range(1, 17):
        for kv_heads in [k for k in range(1, heads + 1) if heads % k == 0]:
            layout = AttentionHeads(heads, kv_heads, 8)
            for world in range(1, 17):
                if world not in layout.world_sizes():
                    with pytest.raises(ConfigError, match=f"{heads} attention heads and {kv_heads} key/value heads, "
                                                          f"which {world} ranks cannot split without cutting a head"):
                        layout.shard(0, world)
                    continue
                shards = [layout.shard(r, world) for r in range(world)]
                # Together the ranks hold every query head once, in order.
                assert [h for s in shards for h in range(s.q_start, s.q_stop)] == list(range(heads))
                for s in shards:
                    assert s.heads % s.kv_heads == 0  # grouped-query attention within the rank
                    for local in range(s.heads):  # the rank's own grouping gives the model's kv head for each head
                        assert s.kv_start + local // (s.heads // s.kv_heads) == (s.q_start + local) // (
                            heads // kv_heads)
                    assert (s.query_rows, s.kv_rows) == ((s.q_start * 8, s.q_stop * 8), (s.kv_start * 8, s.kv_stop * 8))
    assert AttentionHeads(9, 3, 64).world_sizes() == [1, 3, 9]  # SmolLM2: not 2
    assert [(s.kv_start, s.kv_stop) for s in (AttentionHeads(4, 2, 8).shard(r, 4) for r in range(4))] == [
        (0, 1), (0, 1), (1, 2), (1, 2)]


def test_k_proj_with_fewer_kv_heads_than_ranks_is_replicated_whole_never_cut(tmp_path: Path, runtime: Runtime,
                                                                            thread_ranks: Callable) -> None:
    # The case that used to give each of 4 ranks half of one of the 2 key/value heads.
    head, hidden = 8, 32
    g = torch.Generator().manual_seed(5)
    tensors = {"q_proj.weight": torch.randn(4 * head, hidden, generator=g),
               "k_proj.weight": torch.randn(2 * head, hidden, generator=g),
               "k_proj.bias": torch.randn(2 * head, generator=g),
               "o_proj.weight": torch.randn(hidden, 4 * head, generator=g)}
    path = tmp_path / "attn.safetensors"
    save_file(tensors, str(path))
    layout = AttentionHeads(4, 2, head)
    x = torch.randn(TOKENS, hidden, generator=g)

    def rank(comm: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q = ColumnParallelLinear.from_safetensors(runtime, comm, path, "q_proj.weight", heads=layout, device="cpu")
        k = ColumnParallelLinear.from_safetensors(runtime, comm, path, "k_proj.weight", "k_proj.bias", heads=layout,
                                                  device="cpu")
        o = RowParallelLinear.from_safetensors(runtime, comm, path, "o_proj.weight", heads=layout, device="cpu")
        return q(x), k(x), o(q(x))

    outputs = thread_ranks(4, rank)
    q_full = x @ tensors["q_proj.weight"].T
    k_full = x @ tensors["k_proj.weight"].T + tensors["k_proj.bias"]
    for r, (q, k, o) in enumerate(outputs):
        assert torch.allclose(q, q_full[:, r * head:(r + 1) * head], atol=1e-5)  # query head r
        assert torch.allclose(k, k_full[:, r // 2 * head:(r // 2 + 1) * head], atol=1e-5)  # the kv head it uses
        assert torch.allclose(o, q_full @ tensors["o_proj.weight"].T, atol=1e-4)
    # Without its heads an attention projection is refused, never split evenly into half heads.
    with pytest.raises(ConfigError, match=r"tensor 'k_proj.weight' in .* is an attention projection \(k_proj\), but "
                                          r"no heads were given: splitting its 16 rows evenly over 4 ranks"):
        thread_ranks(4, lambda comm: ColumnParallelLinear.from_safetensors(runtime, comm, path, "k_proj.weight",
                                                                           device="cpu"))
    with pytest.raises(ConfigError, match=r"'o_proj.weight' .* \(o_proj\), but no heads were given: splitting its "
                                          r"32 input columns"):
        RowParallelLinear.from_safetensors(runtime, SingleProcessCommunicator(), path, "o_proj.weight", device="cpu")
    with pytest.raises(ConfigError, match=r"tensor 'k_proj.weight' in .* has 2 attention heads and 2 key/value "
                                          r"heads, which 4 ranks cannot split without cutting a head"):
        thread_ranks(4, lambda comm: ColumnParallelLinear.from_safetensors(
            runtime, comm, path, "k_proj.weight", heads=AttentionHeads(2, 2, head), device="cpu"))
    with pytest.raises(ConfigError, match="gathering the copies would repeat heads"):
        thread_ranks(4, lambda comm: ColumnParallelLinear.from_safetensors(
            runtime, comm, path, "k_proj.weight", heads=layout, gather_output=True, device="cpu"))
    with pytest.raises(ConfigError, match=r"'k_proj.weight' in .* has 16 rows, which are neither 4 query heads nor "
                                          "1 key/value heads of 8"):
        ColumnParallelLinear.from_safetensors(runtime, SingleProcessCommunicator(), path, "k_proj.weight",
                                              heads=AttentionHeads(4, 1, head), device="cpu")


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
