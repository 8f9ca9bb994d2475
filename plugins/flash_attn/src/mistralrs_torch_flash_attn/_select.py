"""Which FlashAttention implementation a runtime binds, decided once at bind time (imports torch)."""

from __future__ import annotations

import importlib
from types import ModuleType

from mistralrs_torch.system import GPUFacts, installed_version
from mistralrs_torch_flash_attn._backends import (
    FlashAttention2,
    FlashAttention3,
    TorchFlashAttention,
    torch_flash_check,
)
from mistralrs_torch_flash_attn._manifest import INSTALL_FLASH_ATTN_3


def import_optional(module: str) -> tuple[ModuleType | None, str]:
    """(module, "") when it imports; (None, "") when it is not installed; (None, why) when it is but fails."""
    try:
        return importlib.import_module(module), ""
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None, ""
        return None, f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - a broken install (ABI mismatch, missing CUDA library) is reported
        return None, f"{type(exc).__name__}: {exc}"


def flash_attn_backend(facts: GPUFacts | None = None) -> FlashAttention2 | TorchFlashAttention:
    """The flash-attn package when it imports; otherwise torch's built-in FlashAttention-2 kernel, saying why."""
    module, error = import_optional("flash_attn")
    if module is not None and hasattr(module, "flash_attn_func"):
        version = str(getattr(module, "__version__", "") or installed_version("flash-attn") or "")
        return FlashAttention2(module, version, facts)
    if module is not None:
        error = "the flash_attn module has no flash_attn_func"
    note = f"flash-attn is installed but cannot be used ({error})" if error else ""
    return TorchFlashAttention(facts, torch_flash_check, note)


def flash_attn_v3_backend(facts: GPUFacts | None = None) -> FlashAttention3:
    """FlashAttention-3; when flash_attn_interface does not import, a backend that refuses every call with why."""
    module, error = import_optional("flash_attn_interface")
    if module is None:
        error = (f"flash_attn_interface does not import ({error}): rebuild FlashAttention-3 against this torch: "
                 f"{INSTALL_FLASH_ATTN_3}") if error else (
            f"flash_attn_3 is not installed (module flash_attn_interface not found): {INSTALL_FLASH_ATTN_3}")
    return FlashAttention3(module, installed_version("flash-attn-3") or "", facts, error)
