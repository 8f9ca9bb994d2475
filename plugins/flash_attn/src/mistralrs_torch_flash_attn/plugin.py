"""Entry point of mistralrs-torch-flash-attn: registers flash-attn and flash-attn-v3.

Imports no torch until a runtime binds them.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import TYPE_CHECKING

from mistralrs_torch import FeatureManifest, SystemSnapshot, hookimpl
from mistralrs_torch.system import installed_version
from mistralrs_torch_flash_attn._manifest import FLASH_ATTN, FLASH_ATTN_V3

if TYPE_CHECKING:
    from mistralrs_torch.ops import AttentionBackend, CheckResult


@hookimpl
def mistralrs_features() -> tuple[FeatureManifest, ...]:
    return (FLASH_ATTN, FLASH_ATTN_V3)


@hookimpl
def mistralrs_probe_system(system: SystemSnapshot) -> dict[str, str]:
    # The flash-attn package is optional (torch's built-in FlashAttention-2 kernel stands in),
    # so it is a fact for doctor rather than a requirement.
    # installed_version, not importlib.metadata: that import alone costs ~30 ms of every `plugins list`.
    if importlib.util.find_spec("flash_attn") is None:
        return {}
    return {"flash_attn": installed_version("flash-attn") or ""}


@hookimpl
def mistralrs_attention_backends(active: frozenset[str]) -> tuple[AttentionBackend, ...]:
    wanted = [name for name in (FLASH_ATTN_V3.name, FLASH_ATTN.name) if name in active]
    if not wanted:
        return ()
    from mistralrs_torch_flash_attn._select import flash_attn_backend, flash_attn_v3_backend

    # The backends ask torch for the GPU's facts when they first judge a call, not here.
    # Resolution keeps at most one of the two (they exclude each other); both are handled anyway.
    # An op a backend leaves out is None, which a Protocol's method cannot say: contract_problem checks it.
    return tuple(flash_attn_v3_backend() if name == FLASH_ATTN_V3.name else flash_attn_backend() for name in wanted)  # type: ignore[misc]


@hookimpl
def mistralrs_doctor_checks(active: frozenset[str], system: SystemSnapshot) -> tuple[CheckResult, ...]:
    from mistralrs_torch_flash_attn._checks import flash_checks

    importer = None
    if system.local and "torch" in sys.modules:
        # Only an import proves a compiled package works with this torch; doctor imported torch
        # already (verification on), and a loaded profile describes another machine.
        from mistralrs_torch_flash_attn._select import import_optional

        importer = import_optional
    return tuple(flash_checks(active, system, importer))
