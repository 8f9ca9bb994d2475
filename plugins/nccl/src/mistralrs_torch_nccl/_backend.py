"""The nccl collective backend: torch.distributed's NCCL, one process per GPU."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from mistralrs_torch.parallel import TorchDistributedCommunicator, collective_timeouts
from mistralrs_torch_nccl._world import nccl_rendezvous


class NCCLCollectives:
    """Creates this process's NCCL communicator on the GPU its LOCAL_RANK names.

    ``one_device_per_rank`` tells the core that each process owns exactly one
    device, so automatic device mapping is off while this backend is bound.
    """

    name = "nccl"
    feature = "nccl"
    dispatch_priority = 100
    one_device_per_rank = True

    def communicator(self, environ: Mapping[str, str]) -> TorchDistributedCommunicator:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        rendezvous = nccl_rendezvous(environ, count)
        torch.cuda.set_device(rendezvous.local_rank)
        # Without blocking wait, a timed-out NCCL collective is handled by torch's watchdog thread, which
        # aborts the whole process; with it the caller's wait() raises, and becomes a CollectiveError.
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
        return TorchDistributedCommunicator("nccl", rendezvous, collective_timeouts(environ),
                                            device=f"cuda:{rendezvous.local_rank}")
