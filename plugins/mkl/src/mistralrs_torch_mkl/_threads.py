"""MKL/OpenMP thread settings: honour MKL_NUM_THREADS and OMP_NUM_THREADS; otherwise leave torch's count alone."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from mistralrs_torch import ConfigError

__all__ = ["configure_threads"]


def configure_threads(environ: Mapping[str, str]) -> tuple[int, str]:
    """Apply a thread count the runtime's environment asks for, and return (threads, where the number came from).

    torch reads both variables from the process environment at start-up and, without them, already uses one
    thread per physical core. So the count is changed only when the runtime's environment names one the
    process's own environment did not: a program that called torch.set_num_threads keeps its count.
    """
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
        if raw != os.environ.get(name):
            torch.set_num_threads(threads)
            return threads, name
        return torch.get_num_threads(), f"{name} (applied by torch at start-up, or the program's own setting since)"
    return torch.get_num_threads(), "torch's own setting (one per physical core unless the program set it)"
