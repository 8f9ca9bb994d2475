"""mistralrs-torch-flash-attn's doctor checks: which FlashAttention implementation runs, and how to get a better one.

The implementation is named from the snapshot's facts (the probe's flash_attn
version, the manifest's module facts), so a loaded profile gets the same
answer as the machine it describes. Importing the packages, which is the only
way to know they work with this torch, happens only for this machine and only
when doctor already imported torch.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from mistralrs_torch.ops import CheckResult
from mistralrs_torch.system import SystemSnapshot
from mistralrs_torch_flash_attn._manifest import FLASH_ATTN, FLASH_ATTN_V3, INSTALL_FLASH_ATTN, INSTALL_FLASH_ATTN_3

Importer = Callable[[str], tuple[ModuleType | None, str]]


def flash_checks(active: frozenset[str], system: SystemSnapshot, importer: Importer | None = None) -> list[CheckResult]:
    """The checks for ``system``; ``importer`` (import_optional) is given only when this machine may be asked."""
    checks = []
    if FLASH_ATTN.name in active:
        checks += _flash_attn(system, importer)
    if FLASH_ATTN_V3.name in active:
        checks += _flash_attn_v3(system, importer)
    return checks


def _flash_attn(system: SystemSnapshot, importer: Importer | None) -> list[CheckResult]:
    torch_version = system.torch.version if system.torch else "?"
    version = system.libraries.get("flash_attn")
    builtin = (f"torch {torch_version}'s built-in FlashAttention-2 kernel (dense attention; causal only when query "
               "and keys have one length; no explicit masks); paged attention runs on cuda-sdpa's gather")
    if version is None:
        return [
            CheckResult(
                "flash-attn implementation",
                f"the flash-attn package is not installed: flash-attn runs on {builtin}",
                f"for bottom-right causal and paged decode with FlashAttention-2: {INSTALL_FLASH_ATTN} "
                "(it compiles CUDA code: nvcc and a CUDA toolkit matching torch's)",
                status="info",
            )
        ]
    if importer is not None:
        module, error = importer("flash_attn")
        if module is None:
            return [
                CheckResult(
                    "flash-attn implementation",
                    f"flash-attn {version} is installed but does not import ({error or 'not found'}): "
                    f"flash-attn runs on {builtin} instead",
                    f"rebuild it against this torch: pip install --force-reinstall --no-build-isolation "
                    f"flash-attn=={version}"
                    if version
                    else INSTALL_FLASH_ATTN,
                    status="warning",
                )
            ]
    return [
        CheckResult(
            "flash-attn implementation",
            f"the flash-attn package {version}: dense attention (flash_attn_func) and paged decode "
            "(flash_attn_with_kvcache, KV-cache blocks that are multiples of 256)",
            status="ok",
        )
    ]


def _flash_attn_v3(system: SystemSnapshot, importer: Importer | None) -> list[CheckResult]:
    version = system.modules.get("flash_attn_interface", "")
    label = f"FlashAttention-3 (module flash_attn_interface, flash_attn_3 {version or 'unknown version'})"
    if importer is not None:
        module, error = importer("flash_attn_interface")
        if module is None:
            return [
                CheckResult(
                    "flash-attn-v3 implementation",
                    f"flash-attn-v3 is active but flash_attn_interface does not import "
                    f"({error or 'not found'}): its attention calls fall through to the next backend",
                    f"rebuild FlashAttention-3 against this torch: {INSTALL_FLASH_ATTN_3}",
                    status="error",
                )
            ]
    return [CheckResult("flash-attn-v3 implementation", f"{label}: dense and paged attention on Hopper", status="ok")]
