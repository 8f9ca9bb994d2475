"""Doctor's verification: every bound backend of every op on the registry's smoke cases, on this machine's devices.

The engine is the conformance kit's (:mod:`mistralrs_torch.testing._verify`):
the same cases, references and tolerances; doctor runs the smoke subset.
"""

from __future__ import annotations

from collections.abc import Callable

from mistralrs_torch.doctor._report import Verification
from mistralrs_torch.ops import op_spec
from mistralrs_torch.runtime import Runtime
from mistralrs_torch.testing._verify import TOLERANCES, CaseResult, run_case


def _dtypes(device: str) -> tuple[str, ...]:
    return ("float32", "bfloat16") if device == "cpu" else ("bfloat16", "float16", "float32")


def _summary(results: list[CaseResult]) -> Verification:
    """One line for one backend, op, dtype and device: the worst of its smoke cases."""
    first = results[0]
    tolerance = TOLERANCES[first.dtype]
    failed = [r for r in results if r.status == "failed"]
    measured = [r for r in results if r.max_error is not None]
    worst_max = max((r.max_error for r in measured if r.max_error is not None), default=None)
    worst_rms = max((r.rms_error for r in measured if r.rms_error is not None), default=None)
    seconds = sum(r.seconds for r in results) if not failed or measured else None
    detail = "; ".join(f"{r.case}: {r.detail}" for r in failed)
    return Verification(first.op, first.backend, first.feature, first.dtype, first.device,
                        "failed" if failed else "verified", worst_max, tolerance.max_error, worst_rms,
                        tolerance.rms_error, seconds, len(results), detail)


def verify_runtime(runtime: Runtime, progress: Callable[[str], None] = lambda _: None) -> list[Verification]:
    """Verify each backend bound for each op at each dtype of each of the runtime's devices it supports."""
    verifications = []
    devices = list(dict.fromkeys(d.torch_device for d in runtime.devices))
    for op, dispatcher in runtime.dispatchers().items():
        spec = op_spec(op)
        smoke = [case for case in spec.load_cases()() if case.smoke]
        for backend in dispatcher.backends:
            claimed = False
            for device in devices:
                for dtype in _dtypes(device.split(":")[0]):
                    progress(f"verifying {op} on {backend.name} ({dtype}, {device})")
                    ran = [r for r in (run_case(backend, spec, case, dtype, device) for case in smoke)
                           if r.status != "refused"]
                    if ran:
                        claimed = True
                        verifications.append(_summary(ran))
            if not claimed:
                verifications.append(Verification(op, backend.name, backend.feature, "-", "-", "skipped",
                                                  detail="supports none of the verification cases on this "
                                                         "machine's devices"))
    return verifications
