"""mistralrs-torch-metal: Apple GPUs through torch MPS (feature metal)."""

from mistralrs_torch_metal._manifest import METAL

__all__ = ["METAL"]
