"""MKL/OpenMP thread settings: honour MKL_NUM_THREADS and OMP_NUM_THREADS; otherwise leave torch's count alone."""

from __future__ import annotations

import os
from collections.abc import Mapping

from mistralrs_torch.validation import env_int

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
    """Apply a thread count the runtime's environment asks for, and return (threads, where the number came from).

    torch reads both variables from the process environment at start-up and, without them, already uses one
    thread per physical core. So the count is changed only when the runtime's environment names one the
    process's own environment did not: a program that called torch.set_num_threads keeps its count.
    """
    import torch

    requested = requested_threads(environ)
    if requested is None:
        return torch.get_num_threads(), "torch's own setting (one per physical core unless the program set it)"
    threads, name = requested
    if environ.get(name) != os.environ.get(name):
        torch.set_num_threads(threads)
        return requested
    return torch.get_num_threads(), f"{name} (applied by torch at start-up, or the program's own setting since)"
