"""Run every bound backend of every op on a tiny input and compare with the float64 reference."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from mistralrs_torch.doctor import _reference as ref
from mistralrs_torch.doctor._report import Verification
from mistralrs_torch.ops import CallSpec
from mistralrs_torch.runtime import Runtime, kernel

__all__ = ["TOLERANCE", "verify_runtime"]

#: Largest accepted |out - ref| / max(1, |ref|max) per dtype.
TOLERANCE = {"float64": 1e-9, "float32": 1e-4, "float16": 4e-3, "bfloat16": 3e-2}
_HEAD = 64


def _dtypes(device: str) -> tuple[str, ...]:
    return ("float32", "bfloat16") if device == "cpu" else ("bfloat16", "float16", "float32")


def _attention_case(gen: torch.Generator, q_len: int = 3, k_len: int = 7) -> tuple[tuple[Any, ...], dict[str, Any], Callable[..., np.ndarray], dict[str, Any]]:
    q = torch.randn(2, 4, q_len, _HEAD, generator=gen)
    k = torch.randn(2, 2, k_len, _HEAD, generator=gen)
    v = torch.randn(2, 2, k_len, _HEAD, generator=gen)
    return (q, k, v), {"causal": True}, ref.attention_reference, {
        "head_size": _HEAD, "mask": "causal", "extra": {"gqa": True, "aligned": q_len == k_len}}


def _paged_case(gen: torch.Generator, block_size: int) -> tuple[tuple[Any, ...], dict[str, Any], Callable[..., np.ndarray], dict[str, Any]]:
    seq_lens = torch.tensor([5, block_size + 3], dtype=torch.int32)
    per_seq = -(-int(seq_lens.max()) // block_size)
    blocks = 2 * per_seq + 1
    k_cache = torch.randn(blocks, block_size, 2, _HEAD, generator=gen)
    v_cache = torch.randn(blocks, block_size, 2, _HEAD, generator=gen)
    # Non-contiguous, interleaved block ids, as a real allocator hands them out.
    order = torch.randperm(blocks, generator=gen)[: 2 * per_seq].to(torch.int32)
    table = order.reshape(2, per_seq)
    q = torch.randn(2, 4, 1, _HEAD, generator=gen)
    return ((q, k_cache, v_cache, table, seq_lens), {}, ref.paged_attention_reference,
            {"head_size": _HEAD, "mask": "causal", "extra": {"block_size": block_size, "gqa": True}})


def _linear_case(gen: torch.Generator) -> tuple[tuple[Any, ...], dict[str, Any], Callable[..., np.ndarray], dict[str, Any]]:
    x, w, b = torch.randn(3, 32, generator=gen), torch.randn(24, 32, generator=gen) / 4, torch.randn(24, generator=gen)
    return (x, w, b), {}, ref.linear_reference, {}


def _int8_case(gen: torch.Generator) -> tuple[tuple[Any, ...], dict[str, Any], Callable[..., np.ndarray], dict[str, Any]]:
    x = torch.randn(3, 32, generator=gen)
    w = torch.randint(-127, 128, (24, 32), generator=gen, dtype=torch.int8)
    scale = torch.rand(24, generator=gen) * 0.01 + 0.001
    return (x, w, scale, torch.randn(24, generator=gen)), {}, ref.int8_linear_reference, {"extra": {"in_features": 32}}


def _cases(op: str, gen: torch.Generator) -> Iterator[tuple[tuple[Any, ...], dict[str, Any], Callable[..., np.ndarray], dict[str, Any]]]:
    if op == "attention":
        # Bottom-right causal with a shorter query first; then query and keys of one length, for
        # kernels whose causal mask is top-left and so refuse the first (torch's flash and cuDNN).
        yield _attention_case(gen)
        yield _attention_case(gen, 5, 5)
    elif op == "paged_attention":
        for block_size in (16, 256):
            yield _paged_case(gen, block_size)
    elif op == "linear":
        yield _linear_case(gen)
    else:
        yield _int8_case(gen)


def _cast(arg: Any, dtype: torch.dtype, device: str) -> Any:
    if isinstance(arg, torch.Tensor) and arg.is_floating_point():
        return arg.to(device=device, dtype=dtype)
    return arg.to(device) if isinstance(arg, torch.Tensor) else arg


def _run(function: Callable[..., torch.Tensor], args: tuple[Any, ...], kwargs: dict[str, Any],
         reference: Callable[..., np.ndarray], dtype: str, device: str) -> tuple[float | None, float, str]:
    """(relative max error, or None when the output cannot be compared; seconds; why not comparable)."""
    torch_dtype = getattr(torch, dtype)
    cast = tuple(_cast(a, torch_dtype, device) for a in args)
    start = time.perf_counter()
    out = function(*cast, **kwargs)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    # The reference sees the inputs as the backend saw them (after rounding to dtype), in float64.
    expected = reference(*(a.detach().cpu().double().numpy() if isinstance(a, torch.Tensor) and a.is_floating_point()
                           else a.cpu().numpy() if isinstance(a, torch.Tensor) else a for a in cast), **kwargs)
    got = out.detach().cpu().double().numpy()
    if got.shape != expected.shape:
        return None, seconds, f"output shape {tuple(got.shape)} differs from the reference's {tuple(expected.shape)}"
    if not np.isfinite(got).all():
        return None, seconds, "output contains NaN or infinity"
    return float(np.abs(got - expected).max() / max(1.0, float(np.abs(expected).max()))), seconds, ""


def verify_runtime(runtime: Runtime, progress: Callable[[str], None] = lambda _: None) -> list[Verification]:
    """Verify each backend bound for each op at each dtype it supports on the runtime's devices."""
    results = []
    for op, dispatcher in runtime.dispatchers().items():
        for backend in dispatcher.backends:
            for device in dict.fromkeys(d.torch_device for d in runtime.devices):
                kind = device.split(":")[0]
                tried = False
                for dtype in _dtypes(kind):
                    gen = torch.Generator().manual_seed(0)
                    for args, kwargs, reference, spec in _cases(op, gen):
                        call = CallSpec(op, dtype, kind, **spec)
                        support = backend.supports(call)
                        if not support.ok:
                            continue
                        tried = True
                        progress(f"verifying {op} on {backend.name} ({dtype}, {device})")
                        try:
                            error, seconds, problem = _run(kernel(backend, dispatcher.method, call), args, kwargs,
                                                           reference, dtype, device)
                        except Exception as exc:  # noqa: BLE001 - a crashing backend is a failed verification
                            results.append(Verification(op, backend.name, backend.feature, dtype, device, "failed",
                                                        detail=f"raised {type(exc).__name__}: {exc}"))
                            break
                        tolerance = TOLERANCE[dtype]
                        good = error is not None and error <= tolerance
                        results.append(Verification(op, backend.name, backend.feature, dtype, device,
                                                    "verified" if good else "failed", error, tolerance, seconds,
                                                    "" if good else problem or "result differs from the float64 reference"))
                        break
                if tried:
                    break
            else:
                results.append(Verification(op, backend.name, backend.feature, "-", "-", "skipped",
                                            detail="supports none of the verification cases on this machine's devices"))
    return results
