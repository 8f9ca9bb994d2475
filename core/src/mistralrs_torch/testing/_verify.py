"""The one verification engine: run a backend's op on a case and judge it against the float64 reference.

Doctor (a few smoke cases per bound backend) and the conformance kit (every
case, every dtype) both call :func:`run_case`. A result is judged by two
errors, each relative to the reference's scale, against the tolerance of its
dtype (:data:`TOLERANCES`):

- max error: max |out - ref| / max(1, max |ref|), which catches one wrong element;
- rms error: ||out - ref|| / ||ref|| (Frobenius), which catches a small error
  everywhere, such as a softmax scale off by 1%.

The tolerances are what a correct backend computing internally in float32
meets at each dtype (a float64 call may be computed in float32), measured on
these cases with the generic backend; the bfloat16 and float16 ones are tight
enough that attention with a 1% scale error fails them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from mistralrs_torch.ops import OpSpec, PreparedWeight, QuantizedWeight, kernel_for
from mistralrs_torch.testing._cases import OpCase


@dataclass(frozen=True)
class Tolerance:
    """The largest accepted max error and rms error (both relative; see the module docstring)."""

    max_error: float
    rms_error: float


#: dtype -> tolerance. float64 is held to float32-level accuracy, so a backend may compute it in float32.
TOLERANCES: Mapping[str, Tolerance] = {
    "float64": Tolerance(1e-5, 1e-6),
    "float32": Tolerance(1e-4, 1e-5),
    "float16": Tolerance(4e-3, 1e-3),
    "bfloat16": Tolerance(3e-2, 5e-3),
}


@dataclass(frozen=True)
class CaseResult:
    """One case of one op on one backend: "verified", "failed" or "refused" (with the backend's reason)."""

    op: str
    backend: str
    feature: str
    case: str
    dtype: str
    device: str
    status: str
    max_error: float | None = None
    rms_error: float | None = None
    seconds: float = 0.0
    detail: str = ""


def _as_numpy(value: Any) -> Any:
    """A float64 (or integer) numpy copy of an input, as the reference sees it."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.double().numpy() if value.is_floating_point() else value.numpy()
    if isinstance(value, QuantizedWeight):
        return SimpleNamespace(codes=_as_numpy(value.codes), scales=_as_numpy(value.scales),
                               offsets=None if value.offsets is None else _as_numpy(value.offsets),
                               bits=value.bits, group_size=value.group_size)
    return value


def compare(got: Any, expected: Any, dtype: str) -> tuple[float | None, float | None, str]:
    """(max error, rms error, problem) of outputs against reference outputs; errors None when not comparable."""
    got_all = got if isinstance(got, tuple) else (got,)
    expected_all = expected if isinstance(expected, tuple) else (expected,)
    if len(got_all) != len(expected_all):
        return None, None, f"returned {len(got_all)} outputs, expected {len(expected_all)}"
    worst_max = worst_rms = 0.0
    for index, (out, ref) in enumerate(zip(got_all, expected_all, strict=True)):
        where = f"output {index}: " if len(got_all) > 1 else ""
        if not isinstance(out, torch.Tensor):
            return None, None, f"{where}returned {type(out).__name__}, not a tensor"
        if dtype != "float64" and str(out.dtype).removeprefix("torch.") != dtype:
            return None, None, f"{where}returned dtype {str(out.dtype).removeprefix('torch.')}, expected {dtype}"
        array = out.detach().cpu().double().numpy()
        if array.shape != ref.shape:
            return None, None, f"{where}shape {tuple(array.shape)} differs from the reference's {tuple(ref.shape)}"
        if not np.isfinite(array).all():
            return None, None, f"{where}contains NaN or infinity"
        difference = np.abs(array - ref)
        scale = max(1.0, float(np.abs(ref).max(initial=0.0)))
        worst_max = max(worst_max, float(difference.max(initial=0.0)) / scale)
        norm = float(np.linalg.norm(ref))
        rms = float(np.linalg.norm(difference)) / norm if norm else float(difference.max(initial=0))
        worst_rms = max(worst_rms, rms)
    return worst_max, worst_rms, ""


def run_case(backend: Any, spec: OpSpec, case: OpCase, dtype: str, device: str) -> CaseResult:
    """Ask ``backend`` whether it runs ``case``; if it claims it, run it and judge it against the reference."""
    call = case.call(dtype, device)
    result: dict[str, Any] = {"op": spec.name, "backend": getattr(backend, "name", "?"),
                              "feature": getattr(backend, "feature", "?"), "case": case.name, "dtype": dtype,
                              "device": device}
    try:
        support = backend.supports(call)
    except Exception as exc:  # noqa: BLE001 - a support question must be answered, never raised
        return CaseResult(**result, status="failed", detail=f"supports() raised {type(exc).__name__}: {exc}")
    if not support.ok:
        if not support.reason:
            return CaseResult(**result, status="failed", detail="refused without a reason")
        return CaseResult(**result, status="refused", detail=support.reason)
    args, kwargs = case.build(torch.Generator().manual_seed(0), getattr(torch, dtype), device)
    reference_args = [_as_numpy(a) for a in args]
    reference_kwargs = {k: _as_numpy(v) for k, v in kwargs.items()}
    try:
        function = kernel_for(backend, spec.name, call)
        if spec.prepare:
            weight = args[1]
            payload = getattr(backend, spec.prepare)(weight, call, device)
            args = (args[0], PreparedWeight(result["backend"], payload, call, weight.shape), *args[2:])
        _synchronize(device)
        start = time.perf_counter()
        out = function(*args, **kwargs)
        _synchronize(device)
        seconds = time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001 - a claimed call that raises is a failure to report, not to propagate
        return CaseResult(**result, status="failed", detail=f"claimed it, then raised {type(exc).__name__}: {exc}")
    if spec.writes:
        out = tuple(args[i] for i in spec.writes)
    expected = spec.load_reference()(*reference_args, **reference_kwargs)
    max_error, rms_error, problem = compare(out, expected, dtype)
    tolerance = TOLERANCES[dtype]
    if problem:
        return CaseResult(**result, status="failed", seconds=seconds, detail=f"claimed it, {problem}")
    assert max_error is not None and rms_error is not None
    if max_error > tolerance.max_error or rms_error > tolerance.rms_error:
        return CaseResult(**result, status="failed", max_error=max_error, rms_error=rms_error, seconds=seconds,
                          detail=f"claimed it, max error {max_error:.1e} (tolerance {tolerance.max_error:.0e}), "
                                 f"rms error {rms_error:.1e} (tolerance {tolerance.rms_error:.0e})")
    return CaseResult(**result, status="verified", max_error=max_error, rms_error=rms_error, seconds=seconds)


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elif device.startswith("mps"):
        torch.mps.synchronize()


def reference_output(spec: OpSpec, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
    """The op's float64 reference on a call's arguments: computed once, it judges every candidate of that call."""
    return spec.load_reference()(*(_as_numpy(a) for a in args), **{k: _as_numpy(v) for k, v in kwargs.items()})


def verify_call(spec: OpSpec, kernel: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any], dtype: str,
                expected: Any) -> str:
    """Run ``kernel`` on a real call and judge it against ``expected`` (``reference_output`` of the call): "" when
    within tolerance, else why.

    In-place ops write into copies of their outputs, so the caller's tensors are untouched.
    """
    if spec.writes:
        copies = [a.clone() if i in spec.writes else a for i, a in enumerate(args)]
        kernel(*copies, **kwargs)
        out: Any = tuple(copies[i] for i in spec.writes)
    else:
        out = kernel(*args, **kwargs)
    max_error, rms_error, problem = compare(out, expected, dtype)
    if problem:
        return problem
    tolerance = TOLERANCES[dtype]
    if max_error is not None and rms_error is not None and (max_error > tolerance.max_error
                                                            or rms_error > tolerance.rms_error):
        return (f"max error {max_error:.1e} (tolerance {tolerance.max_error:.0e}), rms error {rms_error:.1e} "
                f"(tolerance {tolerance.rms_error:.0e})")
    return ""
