"""torch's own answer, at bind time, to whether one of its SDPA kernels (flash, cuDNN) runs a call."""

from __future__ import annotations

import torch

from mistralrs_torch.ops import CallSpec

_ASK = {"flash": "can_use_flash_attention", "cudnn": "can_use_cudnn_attention"}


def _probe_tensors(call: CallSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tiny GPU tensors with the call's dtype, head size, head grouping and q/k alignment."""
    dtype = getattr(torch, call.dtype)
    kv_heads = 1 if call.gqa else 2
    q_len, k_len = (128, 128) if call.aligned else (16, 128)
    q = torch.zeros(1, 2, q_len, call.head_size, device="cuda", dtype=dtype)
    k = torch.zeros(1, kv_heads, k_len, call.head_size, device="cuda", dtype=dtype)
    return q, k, k.clone()


def sdpa_kernel_refusal(call: CallSpec, kernel: str) -> str:
    """"" when torch's ``kernel`` ("flash" or "cudnn") runs ``call`` on this GPU, else why not.

    torch.backends.cuda.can_use_*_attention on tiny tensors shaped like the call knows what static
    rules cannot (this library's head-size limits, a build without the kernel); it is asked once per
    call signature, never per call.
    """
    ask = _ASK[kernel]
    try:
        q, k, v = _probe_tensors(call)
        params = torch.backends.cuda.SDPAParams(q, k, v, None, 0.0, call.mask == "causal", bool(call.gqa))
        if getattr(torch.backends.cuda, ask)(params, False):
            return ""
    except Exception as exc:  # noqa: BLE001 - not knowing is a refusal with the reason, not a crash
        return (f"torch {torch.__version__} could not be asked whether its {kernel} attention kernel runs this call "
                f"({type(exc).__name__}: {exc})")
    return f"torch {torch.__version__}'s {ask} refuses this call on this GPU"
