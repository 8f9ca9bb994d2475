"""nccl's doctor checks: MISTRALRS_MN_LOCAL_WORLD_SIZE, MISTRALRS_NO_NCCL contradictions, device mapping mode."""

from __future__ import annotations

from collections.abc import Mapping

from mistralrs_torch import CheckResult, ConfigError, SystemSnapshot
from mistralrs_torch._settings import env_flag
from mistralrs_torch.parallel import MAX_WORLD_SIZE, collective_timeouts, is_power_of_two, torchrun_rendezvous
from mistralrs_torch.validation import env_int, shown
from mistralrs_torch_nccl._world import LOCAL_WORLD_SIZE_VAR, local_world_size

__all__ = ["nccl_checks"]


def _mapping(gpus: int, environ: Mapping[str, str], why_on: str) -> CheckResult:
    """The device-mapping mode with NCCL off, by the core's rule (ranks sharing this machine turn it off too)."""
    from mistralrs_torch.ops import Device
    from mistralrs_torch.parallel._device_map import device_mapping_mode

    mode, reason = device_mapping_mode((), [Device(f"cuda:{i}", "GPU", "cuda") for i in range(gpus)], environ)
    return CheckResult("device mapping", "info", f"off: {reason}" if mode == "disabled" else
                       f"on ({why_on}): layers are spread over the {gpus} GPUs in proportion to their free memory")


def _error(name: str, exc: ConfigError) -> CheckResult:
    message, _, fix = str(exc).rpartition(": ")
    return CheckResult(name, "error", message or fix, fix if message else "")


def nccl_checks(active: frozenset[str], system: SystemSnapshot, environ: Mapping[str, str]) -> list[CheckResult]:
    """Checks for doctor (on this machine or a --system profile); they never raise for bad user input."""
    gpus = len(system.gpus_of("nvidia"))
    checks: list[CheckResult] = []
    try:
        no_nccl = env_flag(environ, "MISTRALRS_NO_NCCL")
    except ConfigError as exc:
        return [_error("MISTRALRS_NO_NCCL", exc)]
    raw = environ.get(LOCAL_WORLD_SIZE_VAR, "").strip()
    ours = shown(raw) if raw else ""
    if no_nccl:
        if ours:
            checks.append(CheckResult(LOCAL_WORLD_SIZE_VAR, "warning", f"{LOCAL_WORLD_SIZE_VAR}={ours} is ignored: "
                                      "MISTRALRS_NO_NCCL=1 turns NCCL off", f"unset {LOCAL_WORLD_SIZE_VAR}, or unset "
                                      "MISTRALRS_NO_NCCL to use NCCL"))
        try:
            launched = env_int(environ, "WORLD_SIZE", 1, MAX_WORLD_SIZE, "the number of processes in the job")
        except ConfigError as exc:
            checks.append(_error("WORLD_SIZE", exc))
            launched = None
        if launched is not None and launched > 1:
            checks.append(CheckResult("MISTRALRS_NO_NCCL", "warning", f"WORLD_SIZE={launched} ranks were launched but "
                                      "MISTRALRS_NO_NCCL=1 turns NCCL off, so each rank would map layers over its "
                                      "GPUs alone", "unset MISTRALRS_NO_NCCL, or start one process"))
        if gpus > 1:
            checks.append(_mapping(gpus, environ, "MISTRALRS_NO_NCCL=1"))
        return checks
    if "nccl" not in active:
        if ours:
            checks.append(CheckResult(LOCAL_WORLD_SIZE_VAR, "warning", f"{LOCAL_WORLD_SIZE_VAR}={ours} is set but nccl "
                                      "is not active, so it is ignored", "select nccl (--features nccl), or unset it"))
        if gpus > 1:
            checks.append(_mapping(gpus, environ, "nccl is not active"))
        return checks
    checks.append(CheckResult("device mapping", "info", "off: NCCL is active (one process per GPU, each holding its "
                              "shard), as with mistral.rs's nccl feature"))
    try:
        torchrun = torchrun_rendezvous(environ)
    except ConfigError as exc:
        checks.append(_error("nccl rendezvous", exc))
        torchrun = None
    if torchrun is not None and not is_power_of_two(torchrun.world_size):
        checks.append(CheckResult("nccl rendezvous", "error", f"WORLD_SIZE={torchrun.world_size} is not a power of "
                                  "two, which nccl needs", "start 1, 2, 4, 8, ... ranks"))
        torchrun = None
    try:
        local, source = local_world_size(environ, gpus, torchrun.world_size if torchrun else None)
    except ConfigError as exc:
        checks.append(_error(LOCAL_WORLD_SIZE_VAR, exc))
    else:
        how = (f"rank {torchrun.rank} of {torchrun.world_size}" if torchrun else
               f"start {local} ranks with `mistralrs launch -n {local} --backend nccl -- COMMAND` or torchrun"
               if local > 1 else "a single process")
        checks.append(CheckResult("nccl world size", "ok", f"{local} rank{'s' if local > 1 else ''} on this machine, "
                                  f"one per GPU ({source}): {how}"))
    try:
        timeouts = collective_timeouts(environ)
        checks.append(CheckResult("collective timeout", "info", f"collectives fail after {timeouts.collective:g}s "
                                  f"without their peers; start-up waits {timeouts.rendezvous:g}s for every rank"))
    except ConfigError as exc:
        checks.append(_error("collective timeout", exc))
    return checks
