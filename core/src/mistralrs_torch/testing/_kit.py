"""The conformance kit: judge one installed plugin against the contract and the float64 references.

Static checks first (entry point, manifests, discovery, light imports,
requirements and exclusions). Then each feature of the plugin (or those named)
is forced active on its own, explicitly selected with what it requires, whatever
auto mode would pick; every backend it returns runs every case of every op it
implements, in every dtype, on every device the selection has (the verification
engine of :mod:`mistralrs_torch.testing._verify`). A feature that cannot run on
this machine is skipped with its reason. The verdict is "failed" when anything
failed, "passed" when nothing failed and at least one backend case (or the
two-rank communicator check) ran, and "skipped" when only static checks ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mistralrs_torch._errors import SelectionError
from mistralrs_torch.features import InstalledFeature
from mistralrs_torch.ops import (
    BACKEND_KINDS,
    BACKEND_PROTOCOLS,
    CallSpec,
    CollectiveBackend,
    Device,
    op_methods,
    op_spec,
)
from mistralrs_torch.plugins import PluginManager
from mistralrs_torch.plugins._builtin import PLUGIN_NAME as BUILTIN
from mistralrs_torch.resolution import Resolution, Selection, resolve
from mistralrs_torch.system import SystemSnapshot
from mistralrs_torch.testing._verify import TOLERANCES, CaseResult, run_case
from mistralrs_torch.validation import shown

#: Verdict -> exit status of `mistralrs plugins test` (5 is pytest's "no tests ran").
VERDICT_EXIT_CODES = {"passed": 0, "failed": 1, "skipped": 5}
#: Rules whose violation means "this machine cannot run it" (skipped), not "the plugin is wrong" (failed).
_CANNOT_RUN_HERE = ("platform", "cpu", "gpu", "compute-capability", "library", "module", "disabled-by", "requires")


@dataclass(frozen=True)
class KitResult:
    """One line of the kit's report: "passed", "failed" or "skipped", what and why.

    ``ran`` is true when backend code ran (cases were computed and compared); ``cases`` holds each case.
    """

    check: str
    status: str
    detail: str = ""
    ran: bool = False
    cases: tuple[CaseResult, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class KitReport:
    """Everything the kit found for one plugin, and its verdict."""

    plugin: str
    features: tuple[str, ...]
    results: tuple[KitResult, ...]

    @property
    def verdict(self) -> str:
        if any(r.status == "failed" for r in self.results):
            return "failed"
        return "passed" if any(r.ran and r.status == "passed" for r in self.results) else "skipped"

    @property
    def exit_code(self) -> int:
        return VERDICT_EXIT_CODES[self.verdict]

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.results) for s in ("passed", "failed", "skipped")}


def _odd_call_result(backend: Any, op: str, device: str, name: str) -> KitResult | None:
    """A call no backend can run (int8 activations) must be refused with a reason, not claimed or raised."""
    try:
        odd = backend.supports(CallSpec(op, "int8", device))
    except Exception as exc:  # noqa: BLE001 - support questions must be answered, never raised
        return KitResult(name, "failed", f"supports() raised {type(exc).__name__} for an int8-activation call "
                                         "instead of refusing it with a reason")
    if odd.ok or not odd.reason:
        return KitResult(name, "failed", "claims, or refuses without a reason, an int8-activation call, which no "
                                         "backend can run")
    return None


def _check_backend(backend: object, kind: str, devices: Sequence[str]) -> list[KitResult]:
    results = []
    label = f"{kind} backend {getattr(backend, 'name', '?')} ({getattr(backend, 'feature', '?')})"
    for op in op_methods(BACKEND_PROTOCOLS[kind]):
        if not callable(getattr(backend, op, None)):
            continue
        spec = op_spec(op)
        name = f"{label} {op}"
        cases: list[CaseResult] = []
        odd = None
        for device in devices:
            odd = odd or _odd_call_result(backend, op, device.split(":")[0], name)
            for dtype in TOLERANCES:
                cases += [run_case(backend, spec, case, dtype, device) for case in spec.load_cases()()]
        claimed = [c for c in cases if c.status != "refused"]
        failed = [c for c in cases if c.status == "failed"]
        refused = len(cases) - len(claimed)
        if odd is not None:
            results.append(odd)
        if failed:
            first = failed[0]
            results.append(KitResult(name, "failed", f"{len(failed)} of {len(cases)} cases fail; first: "
                                     f"[{first.case}, {first.dtype}, {first.device}] {first.detail}",
                                     ran=any(c.max_error is not None for c in cases), cases=tuple(cases)))
        elif not claimed:
            results.append(KitResult(name, "failed", f"claims none of the kit's {len(cases)} cases on "
                                     f"{', '.join(devices)}", cases=tuple(cases)))
        else:
            results.append(KitResult(name, "passed", f"{len(claimed)} claimed cases match the float64 reference; "
                                     f"{refused} refused, each with a reason", ran=True, cases=tuple(cases)))
    return results


def _check_communicator(feature: str, environ: Mapping[str, str]) -> KitResult:
    """Two ranks over `mistralrs launch --backend FEATURE`, each checking every collective."""
    check = f"communicator of {feature} across 2 ranks"
    env = {k: v for k, v in {**os.environ, **environ}.items() if not k.startswith(("MISTRALRS_", "RING_CONFIG"))}
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [sys.executable, "-m", "mistralrs_torch", "launch", "-n", "2", "--backend", feature, "--",
               sys.executable, "-m", "mistralrs_torch.testing._collective_check"]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180, check=False)
    except subprocess.TimeoutExpired:
        return KitResult(check, "failed", "the two ranks did not finish within 180 s", ran=True)
    lines = [line for line in done.stdout.splitlines() if "KIT rank" in line]
    if done.returncode != 0 or len(lines) != 2:
        tail = (done.stdout + done.stderr).strip().splitlines()[-6:]
        return KitResult(check, "failed", f"exit status {done.returncode}: " + " | ".join(lines or tail), ran=True)
    return KitResult(check, "passed", "all_reduce sum/max, all_gather, broadcast in fp32/fp16/bf16 and barrier agree",
                     ran=True)


def _check_single_process(backend: CollectiveBackend) -> KitResult:
    """The built-in communicator of a world of one: every collective is the identity."""
    import torch

    check = f"communicator of {getattr(backend, 'feature', '?')} in a single process"
    communicator: Any = backend.communicator({})  # a plugin's object under test: its answers are checked here
    tensor = torch.arange(6, dtype=torch.float32)
    outcomes = {
        "rank 0 of 1": (communicator.rank, communicator.world_size) == (0, 1),
        "all_reduce sum and max": all(torch.equal(communicator.all_reduce(tensor.clone(), op), tensor)
                                      for op in ("sum", "max")),
        "all_gather": [t.tolist() for t in communicator.all_gather(tensor)] == [tensor.tolist()],
        "broadcast": torch.equal(communicator.broadcast(tensor.clone(), 0), tensor),
        "barrier": communicator.barrier() is None,
    }
    wrong = [name for name, ok in outcomes.items() if not ok]
    if wrong:
        return KitResult(check, "failed", f"wrong: {', '.join(wrong)}", ran=True)
    return KitResult(check, "passed", "rank 0 of 1; all_reduce, all_gather, broadcast and barrier are the identity",
                     ran=True)


def _forced(feature: InstalledFeature, manager: PluginManager, environ: Mapping[str, str],
            system: SystemSnapshot) -> tuple[Resolution | None, KitResult | None]:
    """The feature explicitly selected with everything it requires, or why that cannot be here."""
    wanted: list[str] = []
    pending = [feature.manifest.name]
    manifests = {f.manifest.name: f.manifest for f in manager.features}
    while pending:
        name = pending.pop()
        if name not in wanted:
            wanted.append(name)
            pending += list(manifests[name].requires) if name in manifests else []
    selection = Selection("explicit", tuple(wanted), f"plugins test (forcing {feature.manifest.name})")
    try:
        return resolve(manager.features, manager.broken, selection, system, environ), None
    except SelectionError as exc:
        reasons = "; ".join(str(v) for v in exc.violations)
        status = "skipped" if all(v.rule in _CANNOT_RUN_HERE for v in exc.violations) else "failed"
        prefix = "cannot run here" if status == "skipped" else "cannot be selected"
        return None, KitResult(f"feature {feature.manifest.name}", status, f"{prefix}: {reasons}")


def run_kit(entry_point: str, features: Sequence[str] | None = None,
            environ: Mapping[str, str] | None = None) -> KitReport:
    """Run the contract checks and, for each feature (or those named), every backend case on this machine."""
    from mistralrs_torch.testing._contract import CONTRACT_CHECKS, PluginUnderTest

    environ = {} if environ is None else environ
    manager = PluginManager(environ=environ, strict=False)
    mine = [f for f in manager.features if f.plugin.name == entry_point]
    broken = [b for b in manager.broken if b.plugin.name == entry_point]
    if broken:
        return KitReport(entry_point, (), (KitResult("discovery", "failed", f"{broken[0].stage}: {broken[0].error}"),))
    if not mine:
        installed = sorted({f.plugin.name for f in manager.features})
        missing = f"no installed plugin named {shown(entry_point)}: installed plugins are {', '.join(installed)}"
        return KitReport(entry_point, (), (KitResult("discovery", "failed", missing),))
    names = [f.manifest.name for f in mine]
    unknown = [n for n in features or () if n not in names]
    if unknown:
        return KitReport(
            entry_point,
            tuple(names),
            (
                KitResult(
                    "features",
                    "failed",
                    f"plugin {shown(entry_point)} "
                    f"has no feature {', '.join(map(shown, unknown))}: pass --features with some of "
                    f"{', '.join(names)}",
                ),
            ),
        )
    plugin = PluginUnderTest(entry_point, mine[0].plugin.distribution, tuple(f.manifest for f in mine))
    results = []
    for check in CONTRACT_CHECKS:
        if entry_point == BUILTIN and "entry_point" in check.__name__:
            results.append(
                KitResult(check.__name__, "skipped", "the built-in plugin is part of the core, not an entry point")
            )
            continue
        try:
            check(plugin)
        except AssertionError as exc:
            results.append(KitResult(check.__name__, "failed", str(exc)))
        else:
            results.append(KitResult(check.__name__, "passed"))
    system = manager.probe_system()
    for feature in (f for f in mine if not features or f.manifest.name in features):
        resolution, problem = _forced(feature, manager, environ, system)
        if resolution is None:
            assert problem is not None
            results.append(problem)
            continue
        active = frozenset(resolution.active)
        devices = manager.collect("mistralrs_devices", Device, active, system=system)
        # Judged on its own device feature's devices (cuda's for cudnn), or on all when it brings none (mkl).
        own = [d.torch_device for d in devices if d.feature in (feature.manifest.name, *feature.manifest.requires)]
        targets = own or [d.torch_device for d in devices]
        for kind, hook in BACKEND_KINDS.items():
            found = manager.collect(
                hook,
                BACKEND_PROTOCOLS[kind],
                active,
                **({} if kind == "collectives" else {"system": system, "environ": environ}),
            )
            backends = [b for b in found if b.feature == feature.manifest.name]
            if kind in feature.manifest.provides and not backends:
                results.append(
                    KitResult(
                        f"feature {feature.manifest.name}",
                        "failed",
                        f"declares it provides {kind}, but its plugin returns no {kind} backend",
                    )
                )
            if kind == "collectives":
                results += [
                    _check_communicator(feature.manifest.name, environ)
                    if feature.plugin.name != BUILTIN
                    else _check_single_process(b)
                    for b in backends
                ]
                continue
            for backend in backends:
                results += _check_backend(backend, kind, targets)
    late = [b for b in manager.broken if b.plugin.name == entry_point]
    results += [KitResult("hooks", "failed", f"{b.stage}: {b.error}") for b in late]
    return KitReport(entry_point, tuple(names), tuple(results))
