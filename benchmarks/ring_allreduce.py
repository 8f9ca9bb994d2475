"""all_reduce through the ring plugin against raw torch.distributed gloo calls, in the same run.

    python benchmarks/ring_allreduce.py [--worlds 2 4] [--min 4K] [--max 64M] [--rounds 5]

For each world size the script starts that many ranks on this machine over
loopback (RING_CONFIG from `mistralrs ring configs`, GLOO_SOCKET_IFNAME=lo,
OMP_NUM_THREADS=1). Each rank creates its communicator through the runtime,
as a model would, then times float32 all_reduce(sum) at every size twice:
through the plugin's communicator and through torch.distributed.all_reduce
on the very same process group, in alternating rounds so that drift hits
both alike. A time is the slowest rank's mean per call; the median of the
rounds is reported, and the ratio is the median of each round's own
plugin/raw ratio (paired: a slow spell on this shared machine lands on
both halves of a round instead of on one side's median). Each round also
times the raw call a second time: the raw/raw ratio ("A/A") is what the
machine's noise alone gives, so a plugin/raw ratio inside the A/A spread
is no measurable overhead. Bus bandwidth is 2(n-1)/n * bytes / time (what each
rank's links carry in a ring all-reduce). A plain loopback TCP copy between
two threads gives the local limit for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _bytes(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    return int(float(text[:-1]) * UNITS[text[-1]]) if text[-1] in UNITS else int(text)


def _label(n: int) -> str:
    for unit in ("G", "M", "K"):
        if n >= UNITS[unit] and n % UNITS[unit] == 0:
            return f"{n // UNITS[unit]} {unit}iB"
    return f"{n} B"


def loopback_tcp(total: int = 64 << 20, chunk: int = 1 << 20, repeats: int = 5) -> float:
    """Bytes per second of one plain TCP stream over loopback (median of ``repeats`` copies of ``total`` bytes)."""
    rates = []
    for _ in range(repeats):
        server = socket.create_server(("127.0.0.1", 0))
        port = server.getsockname()[1]
        received = [0]

        def sink(server: socket.socket, received: list[int]) -> None:
            conn, _ = server.accept()
            buffer = bytearray(chunk)
            view = memoryview(buffer)
            while received[0] < total:
                n = conn.recv_into(view)
                if not n:
                    break
                received[0] += n
            conn.close()

        thread = threading.Thread(target=sink, args=(server, received))
        thread.start()
        data = memoryview(bytes(chunk))
        with socket.create_connection(("127.0.0.1", port)) as client:
            started = time.perf_counter()
            for _ in range(total // chunk):
                client.sendall(data)
            thread.join()
            rates.append(total / (time.perf_counter() - started))
        server.close()
    return statistics.median(rates)


def worker(sizes: list[int], rounds: int) -> None:
    import torch
    import torch.distributed as dist

    from mistralrs_torch import Runtime

    comm = Runtime.create().communicator()
    world = comm.world_size

    def timed(call: Callable[[torch.Tensor], object], tensor: torch.Tensor, iterations: int) -> float:
        dist.barrier()
        started = time.perf_counter()
        for _ in range(iterations):
            call(tensor)
        elapsed = torch.tensor([(time.perf_counter() - started) / iterations], dtype=torch.float64)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the slowest rank sets the pace
        return float(elapsed)

    def raw(tensor: torch.Tensor) -> None:
        dist.all_reduce(tensor)

    def plugin(tensor: torch.Tensor) -> None:
        comm.all_reduce(tensor)

    results = []
    for size in sizes:
        tensor = torch.ones(size // 4, dtype=torch.float32)
        once = timed(raw, tensor, 3)  # warm-up, and a first estimate to size the timed blocks
        iterations = torch.tensor([max(1, min(500, int(0.1 / max(once, 1e-6))))])
        dist.all_reduce(iterations, op=dist.ReduceOp.MAX)
        n = int(iterations)
        times: dict[str, list[float]] = {"plugin": [], "raw": [], "control": []}
        calls = (("plugin", plugin), ("raw", raw), ("control", raw))
        for r in range(rounds):
            for name, call in calls[r % 3:] + calls[:r % 3]:  # each goes first, second and third in turn
                times[name].append(timed(call, tensor, n))
        raw = times["raw"]
        paired = statistics.median(raw_t / plugin_t for raw_t, plugin_t in zip(raw, times["plugin"], strict=True))
        control = statistics.median(raw_t / again for raw_t, again in zip(raw, times["control"], strict=True))
        results.append({"size": size, "iterations": n, "ratio": paired, "aa": control,
                        **{k: statistics.median(v) for k, v in times.items()}})
    if comm.rank == 0:
        print("RESULT " + json.dumps({"world": world, "results": results}), flush=True)


def run_world(world: int, args: argparse.Namespace) -> dict:
    from mistralrs_torch_ring._config import ring_config_set, write_ring_configs

    with tempfile.TemporaryDirectory() as folder:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        paths = write_ring_configs(folder, ring_config_set(world, master_port=port, base_port=port + 1
                                                           if port < 65000 else 20000))
        base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", "--min", str(args.min), "--max",
                                   str(args.max), "--rounds", str(args.rounds)],
                                  env={**base, "RING_CONFIG": str(p), "GLOO_SOCKET_IFNAME": "lo",
                                       "OMP_NUM_THREADS": "1", "MISTRALRS_COLLECTIVE_TIMEOUT": "120"},
                                  stdout=subprocess.PIPE, text=True, start_new_session=True) for p in paths]
        try:
            outputs = [p.communicate(timeout=1800)[0] for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, 9)
                    p.wait()
        if any(p.returncode for p in procs):
            raise SystemExit(f"a rank failed: exit statuses {[p.returncode for p in procs]}")
        (line,) = [line for line in outputs[0].splitlines() if line.startswith("RESULT ")]
        return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--min", type=_bytes, default=4 << 10)
    parser.add_argument("--max", type=_bytes, default=64 << 20)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = []
    size = args.min
    while size <= args.max:
        sizes.append(size)
        size *= 4
    if args.worker:
        worker(sizes, args.rounds)
        return
    tcp = loopback_tcp()
    print(f"loopback TCP copy (one stream, the local limit): {tcp / 1e9:.2f} GB/s")
    print(f"cpu cores: {os.cpu_count()}; float32 all_reduce(sum), median of {args.rounds} alternating rounds; "
          "ratio: median of the rounds' paired plugin/raw bus-bandwidth ratios\n")
    header = (f"{'ranks':>5} {'size':>8} {'plugin us':>11} {'raw us':>11} {'plugin busbw':>13} {'raw busbw':>10} "
              f"{'ratio':>6} {'A/A':>6} {'busbw/tcp':>9}")
    print(header)
    print("-" * len(header))
    ratios, controls = [], []
    for world in args.worlds:
        data = run_world(world, args)
        factor = 2 * (world - 1) / world
        for r in data["results"]:
            plugin_bw, raw_bw = factor * r["size"] / r["plugin"], factor * r["size"] / r["raw"]
            ratios.append(r["ratio"])
            controls.append(r["aa"])
            print(f"{world:>5} {_label(r['size']):>8} {r['plugin'] * 1e6:>11.1f} {r['raw'] * 1e6:>11.1f} "
                  f"{plugin_bw / 1e9:>10.3f} GB/s {raw_bw / 1e9:>5.3f} GB/s {r['ratio']:>6.3f} {r['aa']:>6.3f} "
                  f"{plugin_bw / tcp:>9.3f}")
        print()
    print(f"plugin/raw bus-bandwidth ratio: min {min(ratios):.3f}, median {statistics.median(ratios):.3f}, "
          f"max {max(ratios):.3f}")
    print(f"raw/raw (A/A, the noise alone):  min {min(controls):.3f}, median {statistics.median(controls):.3f}, "
          f"max {max(controls):.3f}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
