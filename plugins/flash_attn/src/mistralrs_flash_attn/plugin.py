"""Entry point of mistralrs-flash-attn: registers flash-attn and flash-attn-v3. Imports no torch."""

from __future__ import annotations

import importlib.metadata
import importlib.util

from mistralrs import FeatureManifest, SystemSnapshot, hookimpl
from mistralrs_flash_attn._manifest import FLASH_ATTN, FLASH_ATTN_V3


@hookimpl
def mistralrs_features() -> tuple[FeatureManifest, ...]:
    return (FLASH_ATTN, FLASH_ATTN_V3)


@hookimpl
def mistralrs_probe_system(system: SystemSnapshot) -> dict[str, str]:
    # The flash-attn package is optional (torch's built-in FlashAttention-2 kernel stands in),
    # so it is a fact for doctor rather than a requirement.
    if importlib.util.find_spec("flash_attn") is None:
        return {}
    try:
        return {"flash_attn": importlib.metadata.version("flash-attn")}
    except importlib.metadata.PackageNotFoundError:
        return {"flash_attn": ""}
