"""Attention and matmul throughput on an NVIDIA GPU: each active mistralrs backend beside the same call made on torch.

Run: python benchmarks/gpu_attention.py [--quick] [--json out.json]

Attention is the forward pass at prefill shapes (32 heads, head size 128,
causal, bf16; batch x sequence from 8 x 1k to 1 x 16k) through every attention
backend the runtime bound here that takes the call: torch's default SDPA
(cuda-sdpa), cuDNN, FlashAttention-2 (the flash-attn package, or torch's
built-in kernel) and FlashAttention-3 when present. Each is timed as the
runtime calls it (the kernel bound for the call signature, contract layout)
and against the same computation called directly on torch or on the library,
so the ratio column (direct time / backend time; 1.00 = no cost) is the cost of going through
mistralrs. Matmul is bf16
x @ w.T at large shapes. TFLOP/s count 4*B*H*Sq*Sk*D (halved for causal) for
attention and 2*M*N*K for matmul; "of peak" divides by the GPU's dense bf16
tensor-core peak from the table below (datasheet numbers, without sparsity).
Without an NVIDIA GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Dense bf16 tensor-core peak TFLOP/s by GPU name fragment, most specific first (vendor datasheets).
PEAK_BF16_TFLOPS = (
    ("GB200", 2500.0), ("B200", 2250.0), ("B100", 1750.0), ("GH200", 989.4), ("H200", 989.4), ("H100 NVL", 835.5),
    ("H100 PCIe", 756.5), ("H100", 989.4), ("H800", 989.4), ("H20", 148.0),
    ("A100", 312.0), ("A800", 312.0), ("A40", 149.7), ("A30", 165.0), ("A10G", 70.0), ("A10", 125.0),
    ("L40S", 362.1), ("L40", 181.0), ("L4", 121.0), ("RTX 6000 Ada", 364.2), ("RTX 5090", 209.5),
    ("RTX 4090", 165.2), ("RTX 4080", 97.5), ("RTX 3090", 71.0), ("RTX A6000", 154.8),
)
ATTENTION_SHAPES = ((8, 1024), (4, 4096), (2, 8192), (1, 16384))
QUICK_ATTENTION_SHAPES = ((8, 1024), (2, 8192))
MATMUL_SHAPES = ((8192, 8192, 8192), (16384, 8192, 8192), (4096, 28672, 8192))
QUICK_MATMUL_SHAPES = ((8192, 8192, 8192),)
HEADS, HEAD_SIZE = 32, 128


def peak_tflops(name: str) -> float | None:
    """The dense bf16 peak of a GPU named ``name`` (None when it is not in the table)."""
    for fragment, peak in PEAK_BF16_TFLOPS:
        if fragment.lower() in name.lower():
            return peak
    return None


def _time_ms(function: Callable[[], Any], rounds: int, device: str = "cuda") -> float:
    """Median milliseconds of ``function`` over ``rounds`` after one warm-up: CUDA events on a GPU, the
    wall clock elsewhere (the tests run these code paths on the CPU)."""
    import time

    import torch

    function()  # warm-up: kernel selection, autotuning, lazy loading
    times = []
    if not device.startswith("cuda"):
        for _ in range(rounds):
            started = time.perf_counter()
            function()
            times.append((time.perf_counter() - started) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize()
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _direct_attention(backend: Any) -> tuple[str, Callable[..., Any]] | None:
    """The same computation called on torch or the library itself, for the ratio (None: no counterpart)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def forced(kind: Any) -> Callable[..., Any]:
        def call(q: Any, k: Any, v: Any) -> Any:
            with sdpa_kernel(kind):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])
        return call

    if backend.name == "cuda-sdpa":
        return "torch SDPA", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if backend.name == "cudnn-attention":
        return "torch SDPA [cuDNN]", forced(SDPBackend.CUDNN_ATTENTION)
    if backend.name == "flash-attn-torch":
        return "torch SDPA [flash]", forced(SDPBackend.FLASH_ATTENTION)
    if backend.name in ("flash-attn-package", "flash-attn-v3"):
        func = backend.module.flash_attn_func

        def library(q: Any, k: Any, v: Any) -> Any:
            out = func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
            return out[0] if isinstance(out, tuple) else out

        return f"{backend.module.__name__}.flash_attn_func", library
    return None


def bench_attention(runtime: Any, shapes: tuple[tuple[int, int], ...], rounds: int, peak: float | None,
                    device: str = "cuda", heads: int = HEADS) -> list[dict]:
    import torch

    from mistralrs_torch.ops import CallSpec
    from mistralrs_torch.ops import kernel_for as kernel

    rows = []
    call = CallSpec("attention", "bfloat16", device.split(":")[0], HEAD_SIZE, "causal", gqa=False, aligned=True)
    for backend in runtime.attention_backends:
        support = backend.supports(call)
        if not support.ok:
            rows.append({"op": "attention", "backend": backend.name, "skipped": support.reason})
            continue
        bound = kernel(backend, "attention", call)
        direct = _direct_attention(backend)
        for batch, seq in shapes:
            q, k, v = (torch.randn(batch, heads, seq, HEAD_SIZE, device=device, dtype=torch.bfloat16) for _ in range(3))
            flops = 4 * batch * heads * seq * seq * HEAD_SIZE / 2
            ms = _time_ms(functools.partial(bound, q, k, v, causal=True), rounds, device)
            row = {"op": "attention", "backend": backend.name, "shape": f"b{batch} s{seq}", "ms": ms,
                   "tflops": flops / ms / 1e9}
            if direct is not None:
                name, function = direct
                direct_ms = _time_ms(functools.partial(function, q, k, v), rounds, device)
                row.update(direct=name, direct_tflops=flops / direct_ms / 1e9, ratio=direct_ms / ms)
            if peak:
                row["of_peak"] = row["tflops"] / peak
            rows.append(row)
    return rows


def bench_matmul(runtime: Any, shapes: tuple[tuple[int, int, int], ...], rounds: int, peak: float | None,
                 device: str = "cuda") -> list[dict]:
    import torch

    from mistralrs_torch.ops import CallSpec
    from mistralrs_torch.ops import kernel_for as kernel

    rows = []
    call = CallSpec("linear", "bfloat16", device.split(":")[0])
    for backend in runtime.matmul_backends:
        if not backend.supports(call).ok:
            continue
        bound = kernel(backend, "linear", call)
        for m, n, k in shapes:
            x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
            w = torch.randn(n, k, device=device, dtype=torch.bfloat16)
            flops = 2 * m * n * k
            ms = _time_ms(functools.partial(bound, x, w, None), rounds, device)
            direct_ms = _time_ms(functools.partial(torch.matmul, x, w.T), rounds, device)
            row = {"op": "matmul", "backend": backend.name, "shape": f"{m}x{k} @ {k}x{n}", "ms": ms,
                   "tflops": flops / ms / 1e9, "direct": "torch.matmul", "direct_tflops": flops / direct_ms / 1e9,
                   "ratio": direct_ms / ms}
            if peak:
                row["of_peak"] = row["tflops"] / peak
            rows.append(row)
    return rows


def render(rows: list[dict], gpu: str, peak: float | None) -> str:
    lines = [f"GPU: {gpu}; dense bf16 peak: " + (f"{peak:.0f} TFLOP/s" if peak else "unknown (not in the table)"),
             f"{'op':<10}{'backend':<20}{'shape':<22}{'ms':>9}{'TFLOP/s':>10}{'of peak':>9}{'direct TFLOP/s':>16}"
             f"{'ratio':>7}  direct call"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['op']:<10}{r['backend']:<20}skipped: {r['skipped']}")
            continue
        of_peak = f"{r['of_peak']:.0%}" if "of_peak" in r else "n/a"
        direct = f"{r['direct_tflops']:>16.1f}{r['ratio']:>7.2f}  {r['direct']}" if "direct" in r else ""
        lines.append(f"{r['op']:<10}{r['backend']:<20}{r['shape']:<22}{r['ms']:>9.3f}{r['tflops']:>10.1f}"
                     f"{of_peak:>9}{direct}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two attention shapes and one matmul shape")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        why = "torch is a CPU build" if torch.version.cuda is None else "torch sees no usable NVIDIA GPU"
        print(f"gpu_attention: no GPU benchmark: {why} (torch {torch.__version__}); run it on a machine with an "
              "NVIDIA GPU and a CUDA build of torch")
        return 0
    from mistralrs_torch.runtime import Runtime

    runtime = Runtime.create(environ={})
    gpu = torch.cuda.get_device_name()
    peak = peak_tflops(gpu)
    rows = bench_attention(runtime, QUICK_ATTENTION_SHAPES if args.quick else ATTENTION_SHAPES, args.rounds, peak)
    rows += bench_matmul(runtime, QUICK_MATMUL_SHAPES if args.quick else MATMUL_SHAPES, args.rounds, peak)
    print(f"active features: {' '.join(sorted(runtime.resolution.active))}; torch {torch.__version__} "
          f"(CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})")
    print(render(rows, gpu, peak))
    if args.json:
        args.json.write_text(json.dumps({"gpu": gpu, "peak_bf16_tflops": peak, "torch": torch.__version__,
                                         "rows": rows}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
