"""The FlashAttention backends (imports torch): the flash-attn package, torch's built-in FlashAttention-2 kernel,
and FlashAttention-3 from flash_attn_interface.

The op contract's tensors are (batch, heads, seq, head size); flash-attn's are
(batch, seq, heads, head size). A transpose is a view with the last dimension
still contiguous, which is all flash-attn asks of its inputs, so no copy is made
either way. Both flash-attn packages align causal masks bottom-right, as the
contract does, and run grouped-query heads natively.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from types import ModuleType

import torch

from mistralrs_torch.generic import sdpa_kernel_refusal
from mistralrs_torch.ops import CallSpec, Support
from mistralrs_torch.system import FactsOnFirstUse, GPUFacts

#: FlashAttention-3 > FlashAttention-2 > cuDNN (200) > cuda's SDPA (100) > generic CPU (-1000).
FA3_PRIORITY = 400
FA2_PRIORITY = 300
_HALF = ("float16", "bfloat16")
_MAX_HEAD = 256
#: flash-attn's paged KV cache needs blocks of a multiple of this many tokens (flash_api.cpp).
FA2_PAGE_MULTIPLE = 256
#: torch's flash kernel runs on these architectures (check_flash_attention_hardware_support: sm80..sm121).
_TORCH_FLASH_CC = ((8, 0), (12, 1))


def _first(result: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    # FlashAttention-3's flash_attn_func returned (out, softmax_lse) until August 2025 and returns out
    # since; flash-attn returns extra tensors only when asked. Either way the output comes first.
    return result[0] if isinstance(result, tuple) else result


def _int32_on(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    # flash-attn checks block tables and sequence lengths are int32 on q's device; no copy when they are.
    return tensor.to(device=device, dtype=torch.int32)


def _refusal(call: CallSpec, facts: GPUFacts, what: str) -> str:
    """What every flash kernel refuses: other devices, dtypes, head sizes and explicit masks ("" = none)."""
    if call.device != "cuda":
        return f"runs on cuda only, not {call.device}"
    if call.dtype not in _HALF:
        return f"dtype {call.dtype} is not one of {', '.join(_HALF)} ({what} computes in half precision)"
    if facts.unusable:
        return facts.unusable
    if call.head_size % 8 or not 0 < call.head_size <= _MAX_HEAD:
        return f"head size {call.head_size} is not a multiple of 8 up to {_MAX_HEAD}, the head sizes {what} runs"
    if call.mask not in ("none", "causal"):
        return (f"mask {call.mask} is not taken: {what} runs causal or unmasked attention only "
                "(explicit masks go to the next backend)")
    return ""


def _parameters(function: Callable[..., object] | None) -> frozenset[str]:
    if function is None:
        return frozenset()
    try:
        return frozenset(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return frozenset()


class FlashAttention2(FactsOnFirstUse):
    """FlashAttention-2 from the flash-attn package: dense (flash_attn_func) and paged decode
    (flash_attn_with_kvcache with a block table), compute capability 8.0 and newer."""

    name = "flash-attn-package"
    feature = "flash-attn"
    dispatch_priority = FA2_PRIORITY

    def __init__(self, module: ModuleType, version: str, facts: GPUFacts | None = None) -> None:
        self.module, self.version, self._facts = module, version, facts
        self._func = module.flash_attn_func
        self._kvcache = getattr(module, "flash_attn_with_kvcache", None)
        # flash-attn gained paged KV caches (block_table) in 2.5.0.
        self._paged_refusal = "" if "block_table" in _parameters(self._kvcache) else (
            f"flash-attn {version or '(unknown version)'} has no flash_attn_with_kvcache(block_table=...) for paged "
            "KV caches: upgrade it (pip install -U flash-attn --no-build-isolation)")

    @property
    def implementation(self) -> str:
        return f"the flash-attn package {self.version}".rstrip()

    def supports(self, call: CallSpec) -> Support:
        refusal = _refusal(call, self.facts, "FlashAttention-2")
        if refusal:
            return Support(False, refusal)
        if self.facts.capability is None or self.facts.capability < (8, 0):
            return Support(False, f"FlashAttention-2 needs compute capability 8.0 or newer (Ampere, Ada, Hopper, "
                                  f"Blackwell); {self.facts.gpu or 'this GPU'} has {self.facts.cc_label}")
        if call.op == "paged_attention":
            if self._paged_refusal:
                return Support(False, self._paged_refusal)
            block = call.block_size
            if block <= 0 or block % FA2_PAGE_MULTIPLE:
                return Support(False, f"block size {block} is not a multiple of {FA2_PAGE_MULTIPLE}, "
                                      "which flash-attn's paged KV cache needs: "
                                      f"allocate the cache in blocks of {FA2_PAGE_MULTIPLE}")
        return Support(True)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                  mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
        out = self._func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale, causal=causal)
        return _first(out).transpose(1, 2)

    def paged_attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        block_table: torch.Tensor, seq_lens: torch.Tensor, *,
                        scale: float | None = None) -> torch.Tensor:
        assert self._kvcache is not None  # supports() refused every paged call otherwise
        out = self._kvcache(q.transpose(1, 2), k_cache, v_cache, cache_seqlens=_int32_on(seq_lens, q.device),
                            block_table=_int32_on(block_table, q.device), softmax_scale=scale, causal=True)
        return _first(out).transpose(1, 2)


class FlashAttention3(FactsOnFirstUse):
    """FlashAttention-3 from flash_attn_interface (distribution flash_attn_3): Hopper only.

    Built from the import of the module at bind time; when that import failed,
    every call is refused with the error, so the fall-through to the next
    backend is recorded and shown, never silent.
    """

    name = "flash-attn-v3"
    feature = "flash-attn-v3"
    dispatch_priority = FA3_PRIORITY

    def __init__(self, module: ModuleType | None, version: str, facts: GPUFacts | None = None,
                 import_error: str = "") -> None:
        self.module, self.version, self._facts = module, version, facts
        self._broken = import_error
        self._func = getattr(module, "flash_attn_func", None)
        self._kvcache = getattr(module, "flash_attn_with_kvcache", None)
        if module is not None and self._func is None:
            self._broken = "flash_attn_interface has no flash_attn_func"
        # Paged KV caches (page_table=) arrived in FlashAttention-3's January 2025 rewrite.
        self._paged_refusal = "" if "page_table" in _parameters(self._kvcache) else (
            "this flash_attn_interface has no flash_attn_with_kvcache(page_table=...) for paged KV caches: rebuild "
            "FlashAttention-3 from a current checkout")

    @property
    def implementation(self) -> str:
        return f"FlashAttention-3 (flash_attn_interface, flash_attn_3 {self.version or 'unknown version'})"

    def supports(self, call: CallSpec) -> Support:
        if self._broken:
            return Support(False, f"FlashAttention-3 cannot run: {self._broken}")
        refusal = _refusal(call, self.facts, "FlashAttention-3")
        if refusal:
            return Support(False, refusal)
        if self.facts.capability is None or self.facts.capability[0] != 9:
            return Support(False, f"FlashAttention-3 runs on Hopper (compute capability 9.x) only; "
                                  f"{self.facts.gpu or 'this GPU'} has {self.facts.cc_label}: use flash-attn")
        if call.op == "paged_attention" and self._paged_refusal:
            return Support(False, self._paged_refusal)
        return Support(True)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                  mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
        # _func is typed as the optional import; it is set whenever supports() accepts a call (ignored below).
        out = self._func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),  # type: ignore[misc]
                         softmax_scale=scale, causal=causal)
        return _first(out).transpose(1, 2)

    def paged_attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        block_table: torch.Tensor, seq_lens: torch.Tensor, *,
                        scale: float | None = None) -> torch.Tensor:
        # _kvcache is None only when supports() refuses every paged call (ignored below).
        out = self._kvcache(q.transpose(1, 2), k_cache, v_cache,  # type: ignore[misc]
                            cache_seqlens=_int32_on(seq_lens, q.device), page_table=_int32_on(block_table, q.device),
                            softmax_scale=scale, causal=True)
        return _first(out).transpose(1, 2)


def torch_flash_check(call: CallSpec) -> str:
    """torch's own judgement, at bind time, of whether its flash kernel runs a call ("" = yes)."""
    return sdpa_kernel_refusal(call, "flash")


_flash_packet = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention", None)
_flash_op = getattr(_flash_packet, "default", None)


def _torch_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                 mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    # The kernel torch's SDPA runs once it has chosen flash, called directly: the choice was made at
    # bind time (supports), so no sdpa_kernel context manager (tens of microseconds) is entered per call.
    # _flash_op is None only on a torch without the op, where supports() refuses every call (ignored below).
    return _flash_op(q, k, v, 0.0, causal, False,  # type: ignore[misc]
                     scale=scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))[0]


class TorchFlashAttention(FactsOnFirstUse):
    """FlashAttention-2 as built into torch (SDPBackend.FLASH_ATTENTION), used when flash-attn is not installed.

    Dense only; its causal mask is top-left, so causal calls are taken only when
    query and keys have one length. ``note`` says why the package is not used
    when it is installed but broken.
    """

    name = "flash-attn-torch"
    feature = "flash-attn"
    dispatch_priority = FA2_PRIORITY
    #: torch has no paged flash kernel: paged calls are not a candidate here (cuda-sdpa gathers them).
    paged_attention = None

    def __init__(self, facts: GPUFacts | None = None, check: Callable[[CallSpec], str] | None = None,
                 note: str = "") -> None:
        self._facts, self._check, self.note = facts, check, note
        self._op_refusal = "" if _flash_op is not None else (
            f"torch {torch.__version__} has no aten._scaled_dot_product_flash_attention: install flash-attn "
            "(pip install flash-attn --no-build-isolation) or a newer torch")

    @property
    def implementation(self) -> str:
        return f"torch {torch.__version__}'s built-in FlashAttention-2 kernel"

    def supports(self, call: CallSpec) -> Support:
        refusal = _refusal(call, self.facts, "torch's FlashAttention-2 kernel") or self._op_refusal
        if refusal:
            return Support(False, refusal)
        low, high = _TORCH_FLASH_CC
        if self.facts.capability is None or not low <= self.facts.capability <= high:
            return Support(False, f"torch's FlashAttention-2 kernel needs compute capability {low[0]}.{low[1]} to "
                                  f"{high[0]}.{high[1]}; {self.facts.gpu or 'this GPU'} has {self.facts.cc_label}")
        if call.mask == "causal" and not call.aligned:
            return Support(False, "causal attention with a query shorter or longer than the keys: torch's flash "
                                  "kernel aligns the causal mask top-left, the op contract bottom-right (install "
                                  "flash-attn for bottom-right causal: pip install flash-attn --no-build-isolation)")
        if self._check is not None:
            refusal = self._check(call)
            if refusal:
                return Support(False, refusal)
        return Support(True)

    attention = staticmethod(_torch_flash)
