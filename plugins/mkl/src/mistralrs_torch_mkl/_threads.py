"""MKL/OpenMP thread settings: honour MKL_NUM_THREADS and OMP_NUM_THREADS, else one thread per core."""

from __future__ import annotations

import os
from collections.abc import Mapping

from mistralrs_torch.validation import env_int

__all__ = ["configure_threads", "requested_threads"]

_VARIABLES = ("MKL_NUM_THREADS", "OMP_NUM_THREADS")
#: More threads than any machine has cores; a larger value is a typo.
_MAX_THREADS = 1 << 16


def requested_threads(environ: Mapping[str, str]) -> tuple[int, str] | None:
    """(threads, variable) from the first of MKL_NUM_THREADS, OMP_NUM_THREADS that is set; None when neither is.

    InputError (a ConfigError) for a value that is not a whole number from 1 to 65536. Imports no torch.
    """
    for name in _VARIABLES:
        threads = env_int(environ, name, 1, _MAX_THREADS, f"the thread count, e.g. {name}=8, or unset it")
        if threads is not None:
            return threads, name
    return None


def configure_threads(environ: Mapping[str, str]) -> tuple[int, str]:
    """Set torch's intra-op threads and return (threads, where the number came from)."""
    import torch

    requested = requested_threads(environ)
    if requested is not None:
        torch.set_num_threads(requested[0])
        return requested
    # Unset: one thread per core the process may run on (oversubscribing hyperthreads slows GEMM).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(cores)
    return cores, "default (one per available core)"
