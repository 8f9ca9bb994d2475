"""CPU GEMM throughput through the mkl backend, torch directly and the generic backend, side by side.

Run: python3 -m uv run --locked python benchmarks/cpu_gemm.py [--size 1024] [--rounds 5]
fp32 and bf16 are dense (size x size) @ (size x size); int8 is weight-only
(16 rows of activations, a decode-sized batch, against an int8 size x size
weight with per-channel scales). GFLOP/s count 2*M*N*K. Then bfloat16 linear by
activation rows on SmolLM2's weight shapes, where bfloat16 GEMM is emulated:
milliseconds of the kernel mkl binds, of bfloat16 directly and of the float32
route (convert the weight, sgemm), which the bound kernel takes only from the
row count where it pays. Peak is estimated as
cores x clock x FLOPs per cycle (FMA width of the best instruction set: 32
fp32 FLOP/cycle with AVX2, 64 with AVX-512, assuming two FMA units).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mistralrs_torch.generic import GenericMatmul
from mistralrs_torch.ops import CallSpec
from mistralrs_torch.system import probe_system
from mistralrs_torch_mkl._backend import MKLMatmul


def _peak_gflops() -> tuple[float, str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mhz = [float(line.split(":")[1]) for line in text.splitlines() if line.startswith("cpu MHz")]
    flags = next((line.split(":")[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    per_cycle = 64 if "avx512f" in flags else 32 if "avx2" in flags else 16
    cores = torch.get_num_threads()
    ghz = (max(mhz) if mhz else 2000.0) / 1000
    return cores * ghz * per_cycle, f"{cores} cores x {ghz:.2f} GHz x {per_cycle} FLOP/cycle"


def _seconds(function: Callable[[], torch.Tensor], rounds: int) -> float:
    """Median seconds of ``function`` over ``rounds`` runs after one warm-up."""
    function()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _gflops(function: Callable[[], torch.Tensor], flops: float, rounds: int) -> float:
    return flops / _seconds(function, rounds) / 1e9


def _bound(backend: MKLMatmul, op: str, dtype: torch.dtype) -> Callable[..., torch.Tensor]:
    """The kernel the runtime would bind for this call signature."""
    return backend.kernel_for(CallSpec(op, str(dtype)[6:], "cpu")) or getattr(backend, op)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16, 32, 128],
                        help="activation rows of the bfloat16 table")
    args = parser.parse_args()
    mkl, generic = MKLMatmul(os.environ, probe_system().cpu.flags), GenericMatmul()
    assert mkl.blas.is_mkl, "torch's BLAS is not MKL here"
    n = args.size
    peak, how = _peak_gflops()
    print(f"MKL {mkl.blas.mkl_version}, CPU capability {mkl.blas.cpu_capability}, {mkl.threads} threads "
          f"({mkl.threads_from}); estimated fp32 peak {peak:.0f} GFLOP/s ({how})")
    w8 = torch.randint(-127, 128, (n, n), dtype=torch.int8)
    cases = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        cases[f"{str(dtype)[6:]} {n}x{n}x{n}"] = (
            2.0 * n**3,
            functools.partial(_bound(mkl, "linear", dtype), a, b),
            lambda a=a, b=b: torch.nn.functional.linear(a, b),
            lambda a=a, b=b: generic.linear(a, b),
        )
    for dtype in (torch.float32, torch.bfloat16):
        x, scale = torch.randn(16, n, dtype=dtype), torch.rand(n, dtype=dtype) / 100
        cases[f"int8-weight {str(dtype)[6:]} 16x{n}x{n}"] = (
            2.0 * 16 * n * n,
            functools.partial(_bound(mkl, "int8_linear", dtype), x, w8, scale),
            # torch directly: the same computation the mkl backend binds for this dtype, written inline
            (lambda x=x, s=scale: torch._weight_int8pack_mm(x, w8, s))
            if dtype == torch.bfloat16
            else (lambda x=x, s=scale: torch.nn.functional.linear(x, w8.to(x.dtype) * s[:, None])),
            lambda x=x, s=scale: generic.int8_linear(x, w8, s),
        )
    print(
        f"{'case':32s} {'mkl':>9s} {'direct':>9s} {'generic':>9s} "
        f"{'mkl/direct':>11s} {'mkl/generic':>12s} {'of peak':>8s}"
    )
    for name, (flops, through_mkl, direct, through_generic) in cases.items():
        rates = {"mkl": [], "direct": [], "generic": []}
        for _ in range(3):  # interleave so drift hits every column alike
            rates["mkl"].append(_gflops(through_mkl, flops, args.rounds))
            rates["direct"].append(_gflops(direct, flops, args.rounds))
            rates["generic"].append(_gflops(through_generic, flops, args.rounds))
        m, d, g = (statistics.median(rates[k]) for k in ("mkl", "direct", "generic"))
        print(f"{name:32s} {m:9.1f} {d:9.1f} {g:9.1f} {m / d:11.3f} {m / g:12.3f} {m / peak:8.1%}")
    if not mkl.native_bf16:
        _bf16_by_rows(mkl, args.rows, args.rounds)


def _bf16_by_rows(mkl: MKLMatmul, rows: list[int], rounds: int) -> None:
    bound = _bound(mkl, "linear", torch.bfloat16)
    print(f"\nbfloat16 linear by rows (emulated bfloat16 GEMM); ms, median of {rounds}")
    print(f"{'weight':>10s} {'rows':>5s} {'mkl bound':>10s} {'bf16':>9s} {'via fp32':>9s} {'bound/best':>11s}")
    for out_features, in_features in ((576, 576), (1536, 576), (576, 1536), (49152, 576)):
        w = torch.randn(out_features, in_features, dtype=torch.bfloat16)
        for m in rows:
            x = torch.randn(m, in_features, dtype=torch.bfloat16)
            ms = [_seconds(f, rounds) * 1e3 for f in (
                lambda x=x, w=w: bound(x, w), lambda x=x, w=w: torch.nn.functional.linear(x, w),
                lambda x=x, w=w: torch.nn.functional.linear(x.float(), w.float()).bfloat16())]
            print(f"{out_features:>5d}x{in_features:<4d} {m:5d} {ms[0]:10.3f} {ms[1]:9.3f} {ms[2]:9.3f} "
                  f"{ms[0] / min(ms[1:]):11.2f}")


if __name__ == "__main__":
    main()
