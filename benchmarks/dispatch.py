"""Dispatch overhead of Runtime ops against calling torch directly, and against a pluggy hook call.

Run: python3 -m uv run --locked python benchmarks/dispatch.py [--rounds 7]
Each round times the same op three ways, side by side: torch directly, through
``Runtime`` (cached dispatch and a direct call), and through a pluggy hook call
per op (what the runtime avoids). The best of the rounds is reported; the aim
is under 0.5 us of overhead per call and a ratio under 1.02.
"""

from __future__ import annotations

import argparse
import math
import timeit
from collections.abc import Callable

import pluggy
import torch
import torch.nn.functional as F

from mistralrs_torch.runtime import Runtime

_hookspec = pluggy.HookspecMarker("bench")
_hookimpl = pluggy.HookimplMarker("bench")


class _Spec:
    @_hookspec(firstresult=True)
    def bench_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...

    @_hookspec(firstresult=True)
    def bench_linear(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor: ...


class _Impl:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @_hookimpl
    def bench_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.runtime.attention(q, k, v)

    @_hookimpl
    def bench_linear(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.runtime.linear(x, w)


def _per_call(function: Callable[[], object], number: int) -> float:
    return timeit.timeit(function, number=number) / number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)  # steadier timings; the overhead being measured is single-threaded Python
    runtime = Runtime.create(features="none", environ={})
    pm = pluggy.PluginManager("bench")
    pm.add_hookspecs(_Spec)
    pm.register(_Impl(runtime))
    # Decode-sized attention: one query token against 1024 cached keys, 32 query / 8 KV heads, head size 128.
    q, k, v = torch.randn(1, 32, 1, 128), torch.randn(1, 8, 1024, 128), torch.randn(1, 8, 1024, 128)
    scale = 1 / math.sqrt(128)
    x, w = torch.randn(1, 256), torch.randn(256, 256)
    cases = {
        "attention (decode, 1x32x1x128 vs 1024 keys)": (
            lambda: F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True),
            lambda: runtime.attention(q, k, v),
            lambda: pm.hook.bench_attention(q=q, k=k, v=v), 300),
        "linear (1x256 @ 256x256)": (
            lambda: F.linear(x, w), lambda: runtime.linear(x, w), lambda: pm.hook.bench_linear(x=x, w=w), 20000),
    }
    for name, (direct, dispatched, hooked, number) in cases.items():
        torch.testing.assert_close(dispatched(), direct())
        rows: dict[str, list[float]] = {"torch": [], "runtime": [], "pluggy": []}
        for _ in range(args.rounds):
            rows["torch"].append(_per_call(direct, number))
            rows["runtime"].append(_per_call(dispatched, number))
            rows["pluggy"].append(_per_call(hooked, number))
        # The minimum over rounds: the best estimate of a call's cost on a machine others share (timeit's advice).
        best = {key: min(values) for key, values in rows.items()}
        print(f"{name}:")
        print(f"  torch directly      {best['torch'] * 1e6:9.2f} us/call")
        print(
            f"  Runtime             {best['runtime'] * 1e6:9.2f} us/call   "
            f"overhead {(best['runtime'] - best['torch']) * 1e6:+6.2f} us"
            f"   ratio {best['runtime'] / best['torch']:.3f}"
        )
        print(
            f"  pluggy hook per op  {best['pluggy'] * 1e6:9.2f} us/call   "
            f"overhead {(best['pluggy'] - best['torch']) * 1e6:+6.2f} us"
            f"   ratio {best['pluggy'] / best['torch']:.3f}"
        )


if __name__ == "__main__":
    main()
