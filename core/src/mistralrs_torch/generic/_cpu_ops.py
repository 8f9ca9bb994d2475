"""RMSNorm, rotary embedding, paged attention and paged-cache writes on the CPU through one C call each.

Plain torch computes each of these ops as five to fifteen tensor ops, whose
per-op cost dominates at decode, where each is a few thousand multiplications:
on SmolLM2 135M the four took about a third of a decode step (see
benchmarks/generate.py, which prints the time per op). The kernels
(_cpu_ops.c, compiled at first use like cpu-blockq's) compute in float32 as
the generic backends do and round half-precision results where torch rounds
them. Dense attention (prompts) stays with cpu-attention's SDPA, which is
faster there. A machine without a C compiler gets the generic backends, and
the refusal says what to install.
"""

from __future__ import annotations

import ctypes

import torch

from mistralrs_torch._errors import OpInputError
from mistralrs_torch.generic._base import TorchBackend
from mistralrs_torch.generic._layers import rotary_tables
from mistralrs_torch.generic._native import NativeLibrary
from mistralrs_torch.ops import CallSpec, Support, TensorMemo

_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
#: Element strides of up to four 4-d tensors, one array a call.
_Strides = ctypes.c_int64 * 16


def _bind(library: ctypes.CDLL) -> ctypes.CDLL:
    pointer, size, flag, real = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    strides = ctypes.POINTER(ctypes.c_int64)
    library.cpu_rms_norm.argtypes = [pointer, pointer, pointer, size, size, real, flag]
    library.cpu_rms_norm.restype = None
    library.cpu_rotary.argtypes = [pointer, pointer, pointer, pointer, strides, size, size, size, size, size, pointer,
                                   pointer, flag]
    library.cpu_rotary.restype = None
    library.cpu_paged_attention.argtypes = [pointer, strides, pointer, size, size, size, size, pointer, pointer, size,
                                            size, pointer, size, pointer, real, flag]
    library.cpu_paged_attention.restype = flag
    library.cpu_write_kv.argtypes = [pointer, pointer, pointer, pointer, pointer, flag, size, size, size]
    library.cpu_write_kv.restype = flag
    return library


class _CpuOps(TorchBackend):
    """What both backends share: float32/bfloat16/float16 on the CPU, and the library or the reason it is missing."""

    def __init__(self, name: str) -> None:
        super().__init__(name, "cpu", -950, "cpu", ("float32", "bfloat16", "float16"))
        self._native = NativeLibrary("_cpu_ops.c", _bind)

    def supports(self, call: CallSpec) -> Support:
        if not callable(getattr(self, call.op, None)):
            return Support(False, f"{self.name} does not implement {call.op}")
        general = super().supports(call)
        if not general.ok:
            return Support(False, general.reason + " (the kernels compute in float32; the generic backends take "
                                                   "float64)")
        if self._native.get() is None:
            return Support(False, self._native.reason)
        return Support(True)


class CpuNativeLayers(_CpuOps):
    """rms_norm and rotary_embedding in one C call each."""

    def __init__(self) -> None:
        super().__init__("cpu-native-layers")
        self._tables = TensorMemo()

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        rows = x.contiguous()
        if weight.dtype != x.dtype:  # a no-op .to() still costs a few microseconds, once per layer
            weight = weight.to(x.dtype)
        weight = weight.contiguous()
        out = torch.empty_like(rows)
        self._native.loaded.cpu_rms_norm(rows.data_ptr(), weight.data_ptr(), out.data_ptr(),
                                         rows.numel() // x.shape[-1], x.shape[-1], eps, _DTYPE_CODES[x.dtype])
        return out

    def rotary_embedding(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                         inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # cpu-layers' tables, kept per step as it keeps them: every layer of a step shares its positions.
        cos, sin = self._tables.get((positions, inv_freq), q.dtype, lambda: rotary_tables(positions, inv_freq, q.dtype))
        q_out, k_out = torch.empty_like(q), torch.empty_like(k)  # x's layout: a transposed projection stays so
        self._native.loaded.cpu_rotary(q.data_ptr(), q_out.data_ptr(), k.data_ptr(), k_out.data_ptr(),
                                       _Strides(*q.stride(), *q_out.stride(), *k.stride(), *k_out.stride()),
                                       q.shape[0], q.shape[1], k.shape[1], q.shape[2], q.shape[3], cos.data_ptr(),
                                       sin.data_ptr(), _DTYPE_CODES[q.dtype])
        return q_out, k_out


class CpuNativeAttention(_CpuOps):
    """paged_attention and write_kv_cache in one C call each; dense attention is left to cpu-attention."""

    attention = None

    def __init__(self) -> None:
        super().__init__("cpu-native-attention")

    def paged_attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                        seq_lens: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
        batch, heads, q_len, head_size = q.shape
        k_cache, v_cache = k_cache.contiguous(), v_cache.contiguous()
        table, lens = block_table.contiguous(), seq_lens.contiguous()
        out = torch.empty(q.shape, dtype=q.dtype)
        if self._native.loaded.cpu_paged_attention(
                q.data_ptr(), _Strides(*q.stride()), out.data_ptr(), batch, heads, q_len, head_size,
                k_cache.data_ptr(), v_cache.data_ptr(), k_cache.shape[1], k_cache.shape[2], table.data_ptr(),
                table.shape[1], lens.data_ptr(), head_size ** -0.5 if scale is None else scale, _DTYPE_CODES[q.dtype]):
            raise MemoryError(f"cpu-native-attention could not allocate its scratch for {batch * heads * q_len} "
                              "queries: free memory or run fewer sequences at once")
        return out

    def write_kv_cache(self, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                       slot_mapping: torch.Tensor) -> None:
        k, v, slots = k.contiguous(), v.contiguous(), slot_mapping.contiguous()
        for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
            if not cache.is_contiguous():
                raise OpInputError(f"write_kv_cache: it writes in place: {name} must be contiguous (a view of a "
                                   "slice cannot take the writes); pass the cache tensor itself")
        slot_bytes = k.element_size() * k_cache.shape[2] * k_cache.shape[3]
        if self._native.loaded.cpu_write_kv(k.data_ptr(), v.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
                                            slots.data_ptr(), int(slots.dtype == torch.int64), k.shape[0], slot_bytes,
                                            k_cache.shape[0] * k_cache.shape[1]):
            raise OpInputError(f"write_kv_cache: slot_mapping holds a slot outside the cache's 0.."
                               f"{k_cache.shape[0] * k_cache.shape[1] - 1} (-1 skips a token); nothing was written")
