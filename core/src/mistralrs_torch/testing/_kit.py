"""The conformance kit: run one installed plugin's backends against the contract and the CPU reference.

For each backend of each active feature of the plugin: every case it claims is
computed and compared with the float64 reference; every case it refuses must
come with a reason; an unknown dtype must be refused, not raise. Features that
cannot run here are skipped with their reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from mistralrs_torch.doctor._verify import TOLERANCE
from mistralrs_torch.ops import AttentionBackend, CallSpec, CollectiveBackend, Device, MatmulBackend
from mistralrs_torch.plugins import PluginManager
from mistralrs_torch.plugins._builtin import PLUGIN_NAME as BUILTIN
from mistralrs_torch.resolution import FeatureStatus, Selection, resolve
from mistralrs_torch.runtime import kernel
from mistralrs_torch.testing._cases import OpCase, op_cases

__all__ = ["KitResult", "run_kit"]

_METHODS = {"attention": ("attention", "paged_attention"), "matmul": ("linear", "int8_linear")}
_HOOKS = {"attention": ("mistralrs_attention_backends", AttentionBackend),
          "matmul": ("mistralrs_matmul_backends", MatmulBackend),
          "collectives": ("mistralrs_collective_backends", CollectiveBackend)}


@dataclass(frozen=True)
class KitResult:
    """One line of the kit's report: "passed", "failed" or "skipped", with what and why."""

    check: str
    status: str
    detail: str = ""


def _compare(case: OpCase, function: Callable[..., torch.Tensor], dtype: str, device: str) -> tuple[bool, str]:
    args, kwargs = case.build(torch.Generator().manual_seed(0))
    torch_dtype = getattr(torch, dtype)
    cast = tuple(a.to(device=device, dtype=torch_dtype) if isinstance(a, torch.Tensor) and a.is_floating_point()
                 else a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
    cast_kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    try:
        out = function(*cast, **cast_kwargs)
    except Exception as exc:  # noqa: BLE001 - a claimed call that raises is a failure to report, not to propagate
        return False, f"claimed it, then raised {type(exc).__name__}: {exc}"
    as_numpy = [a.detach().cpu().double().numpy() if isinstance(a, torch.Tensor) and a.is_floating_point()
                else a.cpu().numpy() if isinstance(a, torch.Tensor) else a for a in cast]
    numpy_kwargs = {k: v.cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    expected = case.reference(*as_numpy, **numpy_kwargs)
    got = out.detach().cpu().double().numpy()
    if got.shape != expected.shape:
        return False, f"claimed it, returned shape {got.shape}, expected {expected.shape}"
    if not np.isfinite(got).all():
        return False, "claimed it, returned NaN or infinity"
    error = float(np.abs(got - expected).max() / max(1.0, float(np.abs(expected).max())))
    if error > TOLERANCE[dtype]:
        return False, f"claimed it, max relative error {error:.2e} > tolerance {TOLERANCE[dtype]:.0e}"
    return True, f"max error {error:.1e}"


def _check_backend(backend: object, kind: str, devices: list[str]) -> list[KitResult]:
    results = []
    name = f"{kind} backend {getattr(backend, 'name', '?')} ({getattr(backend, 'feature', '?')})"
    for method in _METHODS[kind]:
        if not callable(getattr(backend, method, None)):
            continue
        claimed = refused = failed = 0
        for device in devices:
            kind_of_device = device.split(":")[0]
            try:
                odd = backend.supports(CallSpec(method, "int8", kind_of_device))  # type: ignore[attr-defined]
            except Exception as exc:  # noqa: BLE001 - support questions must be answered, never raised
                results.append(KitResult(f"{name} {method}", "failed", f"supports() raised {type(exc).__name__} for an "
                                         "int8-activation call instead of refusing it with a reason"))
                continue
            if odd.ok or not odd.reason:
                results.append(KitResult(f"{name} {method}", "failed", "claims or refuses without reason an int8 "
                                         "activation call, which no backend can run"))
            for dtype in TOLERANCE:
                for case in op_cases(method):
                    call = CallSpec(method, dtype, kind_of_device, case.head_size, case.mask, case.extra)
                    support = backend.supports(call)  # type: ignore[attr-defined]
                    if not support.ok:
                        refused += 1
                        if not support.reason:
                            failed += 1
                            results.append(KitResult(f"{name} {method} [{case.name}, {dtype}, {device}]", "failed",
                                                     "refused without a reason"))
                        continue
                    claimed += 1
                    ok, detail = _compare(case, kernel(backend, method, call), dtype, device)
                    if not ok:
                        failed += 1
                        results.append(KitResult(f"{name} {method} [{case.name}, {dtype}, {device}]", "failed", detail))
        if not claimed:
            results.append(KitResult(f"{name} {method}", "failed", f"claims none of the kit's cases on {', '.join(devices)}"))
        elif not failed:
            results.append(KitResult(f"{name} {method}", "passed", f"{claimed} claimed cases match the float64 "
                                     f"reference; {refused} refused, each with a reason"))
    return results


def _check_communicator(feature: str, status: FeatureStatus, environ: Mapping[str, str]) -> KitResult:
    """Two ranks over `mistralrs launch --backend FEATURE`, each checking every collective."""
    check = f"communicator of {feature} across 2 ranks"
    if status.status == "unavailable":
        return KitResult(check, "skipped", f"{feature} cannot run here: {status.reasons[0] if status.reasons else ''}")
    env = {k: v for k, v in {**os.environ, **environ}.items() if not k.startswith(("MISTRALRS_", "RING_CONFIG"))}
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [sys.executable, "-m", "mistralrs_torch", "launch", "-n", "2", "--backend", feature, "--",
               sys.executable, "-m", "mistralrs_torch.testing._collective_check"]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180, check=False)
    except subprocess.TimeoutExpired:
        return KitResult(check, "failed", "the two ranks did not finish within 180 s")
    lines = [line for line in done.stdout.splitlines() if "KIT rank" in line]
    if done.returncode != 0 or len(lines) != 2:
        tail = (done.stdout + done.stderr).strip().splitlines()[-6:]
        return KitResult(check, "failed", f"exit status {done.returncode}: " + " | ".join(lines or tail))
    return KitResult(check, "passed", "all_reduce sum/max, all_gather, broadcast in fp32/fp16/bf16 and barrier agree")


def run_kit(entry_point: str, environ: Mapping[str, str] | None = None) -> list[KitResult]:
    """Run the contract checks and the backend checks on one installed plugin."""
    from mistralrs_torch.testing._contract import CONTRACT_CHECKS, PluginUnderTest

    environ = {} if environ is None else environ
    manager = PluginManager(environ=environ, strict=False)
    mine = [f for f in manager.features if f.plugin.name == entry_point]
    broken = [b for b in manager.broken if b.plugin.name == entry_point]
    if broken:
        return [KitResult("discovery", "failed", f"{broken[0].stage}: {broken[0].error}")]
    if not mine:
        installed = sorted({f.plugin.name for f in manager.features})
        return [KitResult("discovery", "failed", f"no installed plugin named {entry_point!r}: installed plugins are "
                          f"{', '.join(installed)}")]
    plugin = PluginUnderTest(entry_point, mine[0].plugin.distribution, tuple(f.manifest for f in mine))
    results = []
    for check in CONTRACT_CHECKS:
        if entry_point == BUILTIN and "entry_point" in check.__name__:
            results.append(KitResult(check.__name__, "skipped", "the built-in plugin is part of the core, not an entry point"))
            continue
        try:
            check(plugin)
        except AssertionError as exc:
            results.append(KitResult(check.__name__, "failed", str(exc)))
        else:
            results.append(KitResult(check.__name__, "passed"))
    system = manager.probe_system()
    resolution = resolve(manager.features, manager.broken, Selection(), system, environ)
    active = frozenset(resolution.active)
    devices = [d.torch_device for d in manager.collect("mistralrs_devices", Device, active, system=system)]
    for feature in mine:
        status = resolution.status(feature.manifest.name)
        if status.status != "active":
            results.append(KitResult(f"feature {feature.manifest.name}", "skipped",
                                     f"{status.status} here: {status.reasons[0] if status.reasons else ''}"))
    for kind, (hook, protocol) in _HOOKS.items():
        backends = [b for b in manager.collect(hook, protocol, active, **({} if kind == "collectives" else
                                                                          {"system": system, "environ": environ}))
                    if b.feature in {f.manifest.name for f in mine}]
        for f in mine:
            if kind in f.manifest.provides and f.manifest.name in active and not any(b.feature == f.manifest.name for b in backends):
                results.append(KitResult(f"feature {f.manifest.name}", "failed",
                                         f"active and declares it provides {kind}, but its plugin returns no {kind} backend"))
        if kind in _METHODS:
            for backend in backends:
                results += _check_backend(backend, kind, devices)
    for f in mine:
        if "collectives" in f.manifest.provides:
            results.append(_check_communicator(f.manifest.name, resolution.status(f.manifest.name), environ))
    late = [b for b in manager.broken if b.plugin.name == entry_point]
    results += [KitResult("hooks", "failed", f"{b.stage}: {b.error}") for b in late]
    return results
