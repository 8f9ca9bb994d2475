"""The ring collective backend: torch.distributed's gloo (ring all-reduce over TCP) on every platform."""

from __future__ import annotations

from collections.abc import Mapping

from mistralrs_torch.parallel import TorchDistributedCommunicator, collective_timeouts
from mistralrs_torch_ring._rendezvous import ring_rendezvous


class GlooCollectives:
    """Creates this process's gloo communicator from RING_CONFIG (or the torchrun variables).

    gloo reduces CPU tensors; CUDA and MPS tensors are staged through host memory by the communicator.
    """

    name = "ring-gloo"
    feature = "ring"
    dispatch_priority = 100

    def communicator(self, environ: Mapping[str, str]) -> TorchDistributedCommunicator:
        rendezvous = ring_rendezvous(environ)
        return TorchDistributedCommunicator("gloo", rendezvous, collective_timeouts(environ), device="cpu")
