"""nccl's doctor checks: MISTRALRS_MN_LOCAL_WORLD_SIZE, MISTRALRS_NO_NCCL contradictions, device mapping mode."""

from __future__ import annotations

from collections.abc import Mapping

from mistralrs_torch import CheckResult, ConfigError, SystemSnapshot
from mistralrs_torch.doctor import collective_timeout_check
from mistralrs_torch.parallel import MAX_WORLD_SIZE, is_power_of_two, torchrun_rendezvous
from mistralrs_torch.validation import env_flag, env_int, shown
from mistralrs_torch_nccl._world import LOCAL_WORLD_SIZE_VAR, local_world_size


def _mapping(gpus: int, environ: Mapping[str, str], why_on: str) -> list[CheckResult]:
    """The device-mapping mode with NCCL off, by the core's rule (ranks sharing this machine turn it off too),
    and an explicit MISTRALRS_DEVICE_LAYERS map judged against the GPUs."""
    from mistralrs_torch.doctor import device_layers_check
    from mistralrs_torch.ops import Device
    from mistralrs_torch.parallel import device_mapping_mode

    if not gpus:
        return []  # nothing NCCL could change: doctor's runtime judges any explicit map
    # The devices a runtime would bind here: every GPU, and the built-in CPU device.
    devices = [Device(f"cuda:{i}", "GPU", "cuda") for i in range(gpus)] + [Device("cpu", "CPU", "cpu")]
    explicit = device_layers_check((), devices, environ)
    if explicit and explicit[0].status == "info":  # an explicit map that holds: mapping is on, as it says
        return [CheckResult(explicit[0].subject, f"on ({why_on}): {explicit[0].message}", status="info")]
    mode, reason = device_mapping_mode((), devices, environ)
    if mode == "disabled":
        return [CheckResult("device mapping", f"off: {reason}", status="info"), *explicit]
    if explicit or gpus < 2:
        return explicit
    return [CheckResult("device mapping", f"on ({why_on}): layers are spread over the {gpus} GPUs in "
                        "proportion to their free memory", status="info")]


def _nccl_mapping(environ: Mapping[str, str]) -> list[CheckResult]:
    """Device mapping with NCCL active: off, and an explicit MISTRALRS_DEVICE_LAYERS map contradicts it."""
    from mistralrs_torch.doctor import DEVICE_LAYERS_CHECK
    from mistralrs_torch.parallel import DEVICE_LAYERS_VAR

    checks = [CheckResult("device mapping", "off: NCCL is active (one process per GPU, each holding its "
                          "shard), as with mistral.rs's nccl feature", status="info")]
    value = environ.get(DEVICE_LAYERS_VAR, "").strip()
    if value:
        checks.append(
            CheckResult(
                DEVICE_LAYERS_CHECK,
                f"{DEVICE_LAYERS_VAR}={value!r} is set, but NCCL is "
                "active: each process holds one GPU, so layers are not mapped across GPUs",
                f"unset {DEVICE_LAYERS_VAR}, or set MISTRALRS_NO_NCCL=1 to map layers over the GPUs from one process",
                status="error",
            )
        )
    return checks


def _error(name: str, exc: ConfigError) -> CheckResult:
    message, _, fix = str(exc).rpartition(": ")
    return CheckResult(name, message or fix, fix if message else "", status="error")


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
            checks.append(
                CheckResult(
                    LOCAL_WORLD_SIZE_VAR,
                    f"{LOCAL_WORLD_SIZE_VAR}={ours} is ignored: MISTRALRS_NO_NCCL=1 turns NCCL off",
                    f"unset {LOCAL_WORLD_SIZE_VAR}, or unset MISTRALRS_NO_NCCL to use NCCL",
                    status="warning",
                )
            )
        try:
            launched = env_int(environ, "WORLD_SIZE", 1, MAX_WORLD_SIZE, "the number of processes in the job")
        except ConfigError as exc:
            checks.append(_error("WORLD_SIZE", exc))
            launched = None
        if launched is not None and launched > 1:
            checks.append(
                CheckResult(
                    "MISTRALRS_NO_NCCL",
                    f"WORLD_SIZE={launched} ranks were launched but "
                    "MISTRALRS_NO_NCCL=1 turns NCCL off, so each rank would map layers over its "
                    "GPUs alone",
                    "unset MISTRALRS_NO_NCCL, or start one process",
                    status="warning",
                )
            )
        return checks + _mapping(gpus, environ, "MISTRALRS_NO_NCCL=1")
    if "nccl" not in active:
        if ours:
            checks.append(
                CheckResult(
                    LOCAL_WORLD_SIZE_VAR,
                    f"{LOCAL_WORLD_SIZE_VAR}={ours} is set but nccl is not active, so it is ignored",
                    "select nccl (--features nccl), or unset it",
                    status="warning",
                )
            )
        return checks + _mapping(gpus, environ, "nccl is not active")
    checks += _nccl_mapping(environ)
    try:
        torchrun = torchrun_rendezvous(environ)
    except ConfigError as exc:
        checks.append(_error("nccl rendezvous", exc))
        torchrun = None
    if torchrun is not None and not is_power_of_two(torchrun.world_size):
        checks.append(
            CheckResult(
                "nccl rendezvous",
                f"WORLD_SIZE={torchrun.world_size} is not a power of two, which nccl needs",
                "start 1, 2, 4, 8, ... ranks",
                status="error",
            )
        )
        torchrun = None
    try:
        local, source = local_world_size(environ, gpus, torchrun.world_size if torchrun else None)
    except ConfigError as exc:
        checks.append(_error(LOCAL_WORLD_SIZE_VAR, exc))
    else:
        how = (
            f"rank {torchrun.rank} of {torchrun.world_size}"
            if torchrun
            else f"start {local} ranks with `mistralrs launch -n {local} --backend nccl -- COMMAND` or torchrun"
            if local > 1
            else "a single process"
        )
        checks.append(
            CheckResult(
                "nccl world size",
                f"{local} rank{'s' if local > 1 else ''} on this machine, one per GPU ({source}): {how}",
                status="ok",
            )
        )
    checks.append(collective_timeout_check(environ))
    return checks
