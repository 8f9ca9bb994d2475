"""What every plain-torch backend shares: identity, dispatch priority, one device type and its dtypes."""

from __future__ import annotations

from mistralrs_torch.ops import CallSpec, Support

#: The floating dtypes plain torch runs every op in.
TORCH_DTYPES = ("float32", "float64", "bfloat16", "float16")


class TorchBackend:
    """A backend running plain torch on ``device_type`` for ``dtypes``."""

    def __init__(self, name: str, feature: str, dispatch_priority: int, device_type: str,
                 dtypes: tuple[str, ...]) -> None:
        self.name, self.feature, self.dispatch_priority = name, feature, dispatch_priority
        self.device_type, self.dtypes = device_type, dtypes

    def supports(self, call: CallSpec) -> Support:
        if call.device != self.device_type:
            return Support(False, f"runs on {self.device_type} only, not {call.device}")
        if call.dtype not in self.dtypes:
            return Support(False, f"dtype {call.dtype} is not one of {', '.join(self.dtypes)}")
        return Support(True)
