"""Device-gated markers: gpu and mps tests skip cleanly where the hardware is absent."""

from __future__ import annotations

import pytest


def _available(marker: str) -> tuple[bool, str]:
    import torch  # only when a gated test was collected: keeps light-import tests light

    if marker == "gpu":
        return torch.cuda.is_available(), "needs an NVIDIA GPU with a CUDA build of torch"
    return torch.backends.mps.is_available(), "needs an Apple GPU through torch MPS"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for marker in ("gpu", "mps"):
        gated = [item for item in items if item.get_closest_marker(marker)]
        if not gated:
            continue
        ok, why = _available(marker)
        if not ok:
            for item in gated:
                item.add_marker(pytest.mark.skip(reason=why))
