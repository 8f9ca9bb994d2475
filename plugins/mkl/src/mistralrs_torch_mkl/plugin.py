"""Entry point of mistralrs-torch-mkl: registers the mkl feature. Imports no torch until a runtime binds it."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from mistralrs_torch import FeatureManifest, SystemSnapshot, hookimpl
from mistralrs_torch.system import installed_version
from mistralrs_torch_mkl._manifest import MKL

if TYPE_CHECKING:
    from mistralrs_torch.ops import CheckResult, MatmulBackend


@hookimpl
def mistralrs_features() -> tuple[FeatureManifest, ...]:
    return (MKL,)


@hookimpl
def mistralrs_probe_system(system: SystemSnapshot) -> dict[str, str]:
    # MKL is in torch's build (PyPI's x86_64 wheels link it) or in the mkl wheel, whose version then says which.
    version = installed_version("mkl")
    if version is None and system.torch is not None and system.torch.mkl:
        version = ""
    return {"mkl": version} if version is not None else {}


@hookimpl
def mistralrs_matmul_backends(active: frozenset[str], system: SystemSnapshot,
                              environ: Mapping[str, str]) -> tuple[MatmulBackend, ...]:
    if MKL.name not in active:
        return ()
    from mistralrs_torch_mkl._backend import MKLMatmul

    # An op a backend leaves out is None, which a Protocol's method cannot say: contract_problem checks it.
    return (MKLMatmul(environ, system.cpu.flags),)  # type: ignore[return-value]


@hookimpl
def mistralrs_doctor_checks(active: frozenset[str], system: SystemSnapshot,
                            environ: Mapping[str, str]) -> tuple[CheckResult, ...]:
    if MKL.name not in active:
        return ()
    from mistralrs_torch import ConfigError
    from mistralrs_torch.ops import CheckResult  # here, not at the top: `plugins list` never needs the op contract
    from mistralrs_torch_mkl._threads import requested_threads

    try:
        requested = requested_threads(environ)
    except ConfigError as exc:
        checks = [CheckResult("mkl threads", str(exc), status="error")]
    else:
        checks = [
            CheckResult(
                "mkl threads",
                f"{requested[1]}={requested[0]}"
                if requested
                else "MKL_NUM_THREADS and OMP_NUM_THREADS unset: one thread per available core",
                status="info",
            )
        ]
    # The BLAS proof needs torch; report it only when doctor already imported torch (verification on),
    # so `doctor --no-verify` stays light, and only for this machine, not a loaded profile.
    if system.local and "torch" in sys.modules:
        from mistralrs_torch.system import blas_info

        info = blas_info()
        checks.append(
            CheckResult(
                "mkl blas",
                f"torch's BLAS is MKL {info.mkl_version} (CPU capability {info.cpu_capability})",
                status="ok",
            )
            if info.is_mkl
            else CheckResult(
                "mkl blas",
                f"torch's BLAS is {info.blas}, not MKL",
                "MKL not found: install Intel oneAPI or standalone MKL, with a torch built with MKL",
                status="error",
            )
        )
    return tuple(checks)
