"""mistralrs-torch-flash-attn: FlashAttention-2 and -3 on NVIDIA GPUs (features flash-attn, flash-attn-v3)."""

from mistralrs_torch_flash_attn._manifest import FLASH_ATTN, FLASH_ATTN_V3, INSTALL_FLASH_ATTN, INSTALL_FLASH_ATTN_3

__all__ = ["FLASH_ATTN", "FLASH_ATTN_V3", "INSTALL_FLASH_ATTN", "INSTALL_FLASH_ATTN_3"]
