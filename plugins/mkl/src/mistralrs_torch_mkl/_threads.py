"""MKL/OpenMP thread settings: honour MKL_NUM_THREADS and OMP_NUM_THREADS, else one thread per core."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from mistralrs_torch import ConfigError

__all__ = ["configure_threads"]


def configure_threads(environ: Mapping[str, str]) -> tuple[int, str]:
    """Set torch's intra-op threads and return (threads, where the number came from)."""
    for name in ("MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        raw = environ.get(name)
        if raw is None or not raw.strip():
            continue
        try:
            threads = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a whole number: set it to the thread count, e.g. {name}=8") from None
        if threads < 1:
            raise ConfigError(f"{name}={raw!r} must be at least 1: set it to the thread count, or unset it")
        torch.set_num_threads(threads)
        return threads, name
    # Unset: one thread per core the process may run on (oversubscribing hyperthreads slows GEMM).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(cores)
    return cores, "default (one per available core)"
