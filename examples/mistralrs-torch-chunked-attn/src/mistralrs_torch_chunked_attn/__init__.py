"""mistralrs-torch-chunked-attn: memory-bounded chunked attention on the CPU (feature chunked-attn)."""

from mistralrs_torch_chunked_attn._manifest import CHUNKED_ATTN

__all__ = ["CHUNKED_ATTN"]
