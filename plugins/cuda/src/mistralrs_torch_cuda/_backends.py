"""The cuda and cudnn backends: torch's cuBLAS and SDPA on the GPU, and torch's cuDNN attention kernel.

This module imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from mistralrs_torch.generic import TorchAttention, TorchLayers, TorchMatmul, dense_attention, sdpa_kernel_refusal
from mistralrs_torch.ops import CallSpec, Support
from mistralrs_torch.system import FactsOnFirstUse, GPUFacts
from mistralrs_torch_cuda._facts import CudaFacts, cudnn_label

#: Above the generic CPU backend (-1000); below cuDNN (200), FlashAttention-2 (300) and -3 (400).
CUDA_PRIORITY = 100
CUDNN_PRIORITY = 200
#: What torch computes on an NVIDIA GPU (bfloat16 below Ampere is emulated by torch, slowly, but correct).
CUDA_DTYPES = ("float16", "bfloat16", "float32", "float64")
_HALF = ("float16", "bfloat16")
#: torch's cuDNN attention runs on these architectures (check_cudnn_hardware_support: sm80..sm121).
_CUDNN_CC = ((8, 0), (12, 1))
#: Head sizes cuDNN attention takes everywhere (256 only on some GPUs and builds; torch's own check decides those).
_CUDNN_MAX_HEAD = 128


#: torch's cuDNN attention silently corrupts grouped-query attention with fewer than 8 key/value heads on
#: compute capability 10.x (B200), pytorch/pytorch#193893 (open): it must never see such calls there.
CUDNN_GQA_BUG = "pytorch/pytorch#193893"


def _bug_hits(facts: GPUFacts | None, call: CallSpec) -> bool:
    return bool(call.gqa) and facts is not None and facts.capability is not None \
        and facts.capability[0] == 10


def _expanded_heads_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                              mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    groups = q.shape[1] // k.shape[1]
    return dense_attention(q, k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1), causal=causal,
                           mask=mask, scale=scale)


class CudaSDPA(FactsOnFirstUse, TorchAttention):
    """torch's SDPA on the GPU (it picks flash, memory-efficient, cuDNN or math per call); paged by a gather.

    ``cudnn`` says whether the cudnn feature is active: without it, torch's SDPA is kept off its cuDNN
    kernel during this backend's calls (and nowhere else).
    """

    def __init__(self, facts: CudaFacts | None = None, *, cudnn: bool = True) -> None:
        super().__init__("cuda-sdpa", "cuda", CUDA_PRIORITY, "cuda", CUDA_DTYPES)
        self._facts, self.cudnn = facts, cudnn

    def facts_from_torch(self) -> CudaFacts:
        return CudaFacts.from_torch()

    def kernel_for(self, call: CallSpec) -> Callable[..., torch.Tensor] | None:
        if call.op not in ("attention", "paged_attention"):
            return None
        # torch's dispatcher prefers cuDNN on compute capability 10.x, where cuDNN corrupts grouped-query
        # attention (CUDNN_GQA_BUG): hand it the key/value heads expanded, decided once per signature.
        expanded = call.op == "attention" and _bug_hits(self.facts, call)
        if self.cudnn:
            return _expanded_heads_attention if expanded else None
        return _cudnn_sdp_off(_expanded_heads_attention if expanded else getattr(self, call.op))


def cuda_attention(facts: CudaFacts | None = None, *, cudnn: bool = True) -> CudaSDPA:
    return CudaSDPA(facts, cudnn=cudnn)


def cuda_matmul() -> TorchMatmul:
    """cuBLAS through torch's linear; weight-only int8 dequantised on the GPU, then one cuBLAS GEMM."""
    return TorchMatmul("cuda-matmul", "cuda", CUDA_PRIORITY, "cuda", CUDA_DTYPES)


def cuda_layers() -> TorchLayers:
    """RMSNorm and rotary embedding in torch on the GPU."""
    return TorchLayers("cuda-layers", "cuda", CUDA_PRIORITY, "cuda", CUDA_DTYPES)


def _cudnn_sdp_off(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``function`` with torch's cuDNN SDPA kernel switched off for the duration of each call only.

    Without the cudnn feature, torch's SDPA must not pick cuDNN by itself; switching it off for the
    process would reach into every other user of torch in it.
    """
    def without_cudnn(*args: Any, **kwargs: Any) -> torch.Tensor:
        was = torch.backends.cuda.cudnn_sdp_enabled()
        torch.backends.cuda.enable_cudnn_sdp(False)
        try:
            return function(*args, **kwargs)
        finally:
            torch.backends.cuda.enable_cudnn_sdp(was)

    return without_cudnn


def torch_cudnn_check(call: CallSpec) -> str:
    """torch's own judgement, at bind time, of whether its cuDNN attention kernel runs a call ("" = yes)."""
    return sdpa_kernel_refusal(call, "cudnn")


#: The argument list this module calls the op with (torch 2.5 and later; 2.4's had no attn_bias).
CUDNN_OP_ARGUMENTS = ("query", "key", "value", "attn_bias", "compute_log_sumexp", "dropout_p", "is_causal",
                      "return_debug_mask", "scale")
_cudnn_packet = getattr(torch.ops.aten, "_scaled_dot_product_cudnn_attention", None)
_cudnn_op = getattr(_cudnn_packet, "default", None)


def op_arguments(op: object) -> tuple[str, ...]:
    """The argument names of an aten op overload's schema (empty when it does not exist)."""
    schema = getattr(op, "_schema", None)
    return tuple(a.name for a in schema.arguments) if schema is not None else ()


def _cudnn_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                     mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    if k.shape[-2] == 1:
        # cuDNN SDPA cannot run one key (torch: "cudnn SDPA does not support key/value sequence length 1");
        # the softmax over a single key is exactly 1, so every query row is that key's value.
        groups = q.shape[1] // k.shape[1]
        return v.repeat_interleave(groups, dim=1).expand(q.shape[0], q.shape[1], q.shape[2], v.shape[-1]).contiguous()
    # The kernel torch's SDPA calls once it has chosen cuDNN, called directly: choosing was done at
    # bind time (supports), so no sdpa_kernel context manager is entered per call.
    assert _cudnn_op is not None  # supports() refuses every call on a torch without it
    return _cudnn_op(q, k, v, None, False, 0.0, causal, False,
                     scale=scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))[0]


class CudnnAttention(FactsOnFirstUse):
    """Dense attention through torch's cuDNN attention kernel (feature cudnn).

    It takes fp16/bf16, head sizes that are multiples of 8 up to 128, compute
    capability 8.0 to 12.1, no explicit mask, and causal masks only when query
    and keys have one length (cuDNN's causal mask is top-left; the contract's
    is bottom-right, and the two agree only then). Everything else is refused
    with the reason, and torch's own check has the last word on the GPU.
    """

    name = "cudnn-attention"
    feature = "cudnn"
    dispatch_priority = CUDNN_PRIORITY
    #: torch exposes no paged cuDNN attention: paged calls are not a candidate here (cuda-sdpa gathers them).
    paged_attention = None

    def __init__(self, facts: CudaFacts | None = None, check: Callable[[CallSpec], str] | None = None,
                 op_signature: tuple[str, ...] | None = None) -> None:
        self._facts = facts
        self._check = check
        found = op_arguments(_cudnn_op) if op_signature is None else op_signature
        self._op_refusal = "" if found == CUDNN_OP_ARGUMENTS else (
            f"torch {torch.__version__} has no cuDNN attention op taking ({', '.join(CUDNN_OP_ARGUMENTS)}); "
            f"it has ({', '.join(found) or 'none'}): use torch 2.5 or newer")

    def facts_from_torch(self) -> CudaFacts:
        return CudaFacts.from_torch()

    def supports(self, call: CallSpec) -> Support:
        if call.device != "cuda":
            return Support(False, f"runs on cuda only, not {call.device}")
        if call.op != "attention":
            return Support(False, f"cuDNN attention runs dense attention only, not {call.op}")
        if call.dtype not in _HALF:
            return Support(False, f"dtype {call.dtype} is not one of {', '.join(_HALF)} (cuDNN attention computes "
                                  "in half precision)")
        facts = self.facts
        assert isinstance(facts, CudaFacts)
        if facts.unusable:
            return Support(False, facts.unusable)
        if self._op_refusal:
            return Support(False, self._op_refusal)
        if facts.cudnn is None:
            return Support(False, "torch loads no cuDNN: install a torch built with cuDNN")
        if facts.cudnn < 90000:
            return Support(False, f"cuDNN {cudnn_label(facts.cudnn)} is older than 9.0, which torch's cuDNN "
                                  "attention needs: install a torch that ships cuDNN 9")
        low, high = _CUDNN_CC
        if facts.capability is None or not low <= facts.capability <= high:
            return Support(False, f"cuDNN attention needs compute capability {low[0]}.{low[1]} to {high[0]}.{high[1]}; "
                                  f"{facts.gpu or 'this GPU'} has {facts.cc_label}")
        if call.head_size % 8 or not 0 < call.head_size <= _CUDNN_MAX_HEAD:
            return Support(False, f"head size {call.head_size} is not a multiple of 8 up to {_CUDNN_MAX_HEAD}, "
                                  "the head sizes cuDNN attention runs")
        if call.mask not in ("none", "causal"):
            return Support(False, f"mask {call.mask} is not taken: this backend runs causal or unmasked attention "
                                  "only (explicit masks go to the next backend)")
        if call.mask == "causal" and not call.aligned:
            return Support(False, "causal attention with a query shorter or longer than the keys: cuDNN aligns the "
                                  "causal mask top-left, the op contract bottom-right")
        if _bug_hits(facts, call):
            return Support(False, f"grouped-query attention on compute capability {facts.cc_label}: torch's cuDNN "
                                  f"attention silently corrupts it there ({CUDNN_GQA_BUG})")
        if self._check is not None:
            refusal = self._check(call)
            if refusal:
                return Support(False, refusal)
        return Support(True)

    attention = staticmethod(_cudnn_attention)
