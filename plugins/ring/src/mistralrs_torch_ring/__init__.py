"""mistralrs-torch-ring: collectives over TCP between ranks on any platform (feature ring)."""

from mistralrs_torch_ring._manifest import RING

__all__ = ["RING"]
