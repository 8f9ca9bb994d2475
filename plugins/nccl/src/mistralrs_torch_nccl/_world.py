"""nccl's world-size rules: one process per GPU, a power of two, at most the visible GPUs. Pure Python.

The GPU count comes from the caller (torch.cuda.device_count() at run time, a
system snapshot in doctor), so every rule is testable with simulated profiles.
"""

from __future__ import annotations

from collections.abc import Mapping

from mistralrs_torch import ConfigError
from mistralrs_torch.parallel import (
    MAX_WORLD_SIZE,
    Rendezvous,
    is_power_of_two,
    launched_ranks_here,
    torchrun_rendezvous,
)
from mistralrs_torch.validation import parse_int
from mistralrs_torch_nccl._manifest import LOCAL_WORLD_SIZE_VAR


def _count(environ: Mapping[str, str], name: str, gpu_count: int) -> int:
    return parse_int(environ[name], name, 1, MAX_WORLD_SIZE,
                     f"a number of GPUs: 1, 2, 4, ... (at most {gpu_count}, the GPUs visible here)")


def local_world_size(environ: Mapping[str, str], gpu_count: int, world_size: int | None = None) -> tuple[int, str]:
    """(ranks on this machine, where that number came from), one GPU each; ConfigError when a rule breaks.

    MISTRALRS_MN_LOCAL_WORLD_SIZE wins, then torchrun's LOCAL_WORLD_SIZE, else every visible GPU (no more
    than ``world_size`` ranks, when a launcher says how many there are).
    """
    if gpu_count < 1:
        raise ConfigError("nccl needs an NVIDIA GPU, and none is visible (torch.cuda.device_count() is 0): check "
                          "that `nvidia-smi` lists one and CUDA_VISIBLE_DEVICES does not hide it, or turn NCCL off "
                          "with MISTRALRS_NO_NCCL=1")
    ours = environ.get(LOCAL_WORLD_SIZE_VAR, "").strip()
    launcher = environ.get("LOCAL_WORLD_SIZE", "").strip()
    if ours:
        n, source = _count(environ, LOCAL_WORLD_SIZE_VAR, gpu_count), f"{LOCAL_WORLD_SIZE_VAR}={ours}"
        started = launched_ranks_here(environ)
        if started is not None and started != n:
            raise ConfigError(f"{LOCAL_WORLD_SIZE_VAR}={n} but the launcher started LOCAL_WORLD_SIZE={started} "
                              f"ranks on this machine: make them agree (or unset {LOCAL_WORLD_SIZE_VAR})")
    elif launcher:
        n, source = _count(environ, "LOCAL_WORLD_SIZE", gpu_count), f"LOCAL_WORLD_SIZE={launcher} (the launcher's)"
    else:
        n = gpu_count if world_size is None else min(gpu_count, world_size)
        source = f"all {gpu_count} visible GPUs" if n == gpu_count else f"WORLD_SIZE={world_size}"
    if not is_power_of_two(n):
        lower = 1 << (n.bit_length() - 1)
        raise ConfigError(f"nccl needs a power of two GPUs per machine, and {source} gives {n}: set "
                          f"{LOCAL_WORLD_SIZE_VAR}={lower} (or make {lower} GPUs visible with CUDA_VISIBLE_DEVICES)")
    if n > gpu_count:
        raise ConfigError(f"{source} asks for {n} GPUs but {gpu_count} {'is' if gpu_count == 1 else 'are'} visible: "
                          f"set {LOCAL_WORLD_SIZE_VAR} to at most {1 << (gpu_count.bit_length() - 1)}, or make more "
                          "GPUs visible (CUDA_VISIBLE_DEVICES)")
    if world_size is not None and n > world_size:
        raise ConfigError(f"{source} puts {n} ranks on this machine but WORLD_SIZE={world_size} in all: make them "
                          "agree")
    return n, source


def nccl_rendezvous(environ: Mapping[str, str], gpu_count: int) -> Rendezvous:
    """This process's place: from the torchrun variables, or a world of one on a single GPU."""
    torchrun = torchrun_rendezvous(environ)
    if torchrun is not None and not is_power_of_two(torchrun.world_size):
        raise ConfigError(f"WORLD_SIZE={torchrun.world_size}: nccl needs a power of two (1, 2, 4, 8, ...): start "
                          "that many ranks")
    local, source = local_world_size(environ, gpu_count, torchrun.world_size if torchrun else None)
    if torchrun is None:
        if local == 1:
            return Rendezvous(0, 1, "127.0.0.1", 0, 0, source=f"a single GPU ({source})")
        raise ConfigError(f"nccl runs one process per GPU and {source} means {local}: start them with "
                          f"`mistralrs launch -n {local} --backend nccl -- COMMAND` or `torchrun --nproc-per-node "
                          f"{local} COMMAND`, or set {LOCAL_WORLD_SIZE_VAR}=1 for one GPU")
    if torchrun.local_rank >= local:
        raise ConfigError(f"LOCAL_RANK={torchrun.local_rank} has no GPU: this machine runs {local} ranks ({source}), "
                          f"LOCAL_RANK 0..{local - 1}")
    return torchrun
