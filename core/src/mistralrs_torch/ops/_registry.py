"""The op registry: every op as one entry of data, read by the runtime, explain, doctor, the kit and the docs.

Adding an op is one :class:`OpSpec` here (with its signature functions in
``_signatures.py``, its float64 reference in ``testing/_references.py`` and its
cases in ``testing/_cases.py``), a method in its kind's backend protocol, and
the backends that implement it. Nothing else names the op list.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mistralrs_torch.ops import _signatures as sig
from mistralrs_torch.ops._contract import CallSpec

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from mistralrs_torch.testing._cases import OpCase

#: Kind of backend work -> the hook that returns its backends.
BACKEND_KINDS = {
    "attention": "mistralrs_attention_backends",
    "matmul": "mistralrs_matmul_backends",
    "layers": "mistralrs_layer_backends",
    "collectives": "mistralrs_collective_backends",
}


@dataclass(frozen=True)
class OpSpec:
    """One op: its name (the runtime's and the backends' method), kind, signature and contract."""

    name: str
    #: The kind of backend that implements it (a key of BACKEND_KINDS).
    kind: str
    summary: str
    #: The CallSpec fields (beyond op, dtype, device) that tell its calls apart.
    signature: tuple[str, ...]
    #: The contract, as docs/plugin-api.md prints it: arguments, layouts, dtypes, semantics.
    contract: str
    key: Callable[..., tuple[Any, ...]]
    check: Callable[..., None]
    spec: Callable[..., CallSpec]
    guard: Callable[[tuple[Any, ...], dict[str, Any], bool], None] | None
    #: "module:function" of the float64 numpy reference (imported only when verifying).
    reference: str
    #: "module:function" yielding the kit's and doctor's cases.
    cases: str
    #: A representative call of this op on a device type and dtype, for explain.
    probe: Callable[[str, str], CallSpec]
    #: The tokens a call processes (for measured selection's buckets), from the op's arguments.
    rows: Callable[..., int]
    #: Indices of the arguments the op writes in place (its result); empty: the op returns its result.
    writes: tuple[int, ...] = ()
    #: The backend method that prepares a weight once at load ("" when the op takes weights as they are).
    prepare: str = ""

    def load_reference(self) -> Callable[..., NDArray[Any] | tuple[NDArray[Any], ...]]:
        reference: Callable[..., NDArray[Any] | tuple[NDArray[Any], ...]] = _load(self.reference)
        return reference

    def load_cases(self) -> Callable[[], Iterator[OpCase]]:
        cases: Callable[[], Iterator[OpCase]] = _load(self.cases)
        return cases


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _ref(name: str) -> str:
    return f"mistralrs_torch.testing._references:{name}_reference"


def _cases(name: str) -> str:
    return f"mistralrs_torch.testing._cases:{name}_cases"


OPS: tuple[OpSpec, ...] = (
    OpSpec(
        "attention", "attention", "dense scaled dot-product attention",
        ("head_size", "mask", "gqa", "aligned"),
        """attention(q, k, v, *, causal=False, mask=None, scale=None) -> out
q (batch, heads, q_len, head_size); k, v (batch, kv_heads, k_len, head_size); kv_heads divides heads
(grouped-query attention: query head h reads key/value head h // (heads // kv_heads)). One floating dtype and
one device for all. out has q's shape and dtype. scale defaults to 1/sqrt(head_size). causal masks align
bottom-right: query row i sees keys 0 .. k_len - q_len + i (decode and chunked prefill); q_len <= k_len.
mask: bool (True = may attend) or of q's dtype (added to the scores), broadcastable to
(batch, heads, q_len, k_len); with causal=True both apply. A row that may attend to nothing is undefined.""",
        sig.attention_key, sig.attention_check, sig.attention_spec, sig.attention_guard,
        _ref("attention"), _cases("attention"),
        lambda device, dtype: CallSpec("attention", dtype, device, 128, "causal", False, True),
        sig.attention_rows,
    ),
    OpSpec(
        "paged_attention", "attention", "attention over a paged KV cache",
        ("head_size", "mask", "gqa", "block_size"),
        """paged_attention(q, k_cache, v_cache, block_table, seq_lens, *, scale=None) -> out
q (batch, heads, q_len, head_size): the newest q_len tokens of each sequence. k_cache, v_cache
(blocks, block_size, kv_heads, head_size). block_table int32 (batch, max_blocks): row b lists the blocks of
sequence b in order; entries past ceil(seq_lens[b] / block_size) are ignored (any value). seq_lens int32
(batch,): tokens of each sequence in the cache, the new ones included (q_len <= seq_lens[b] <= max_blocks *
block_size). Causal, bottom-right within each sequence. Cache slots past a sequence's length may hold anything,
NaN included, and must not leak into the result. out has q's shape and dtype.""",
        sig.paged_attention_key, sig.paged_attention_check, sig.paged_attention_spec, sig.paged_attention_guard,
        _ref("paged_attention"), _cases("paged_attention"),
        lambda device, dtype: CallSpec("paged_attention", dtype, device, 128, "causal", False, True, 16),
        sig.attention_rows,
    ),
    OpSpec(
        "write_kv_cache", "attention", "writes new keys and values into the paged KV cache",
        ("head_size", "block_size"),
        """write_kv_cache(k, v, k_cache, v_cache, slot_mapping) -> None (writes k_cache and v_cache in place)
k, v (tokens, kv_heads, head_size) of the caches' dtype; k_cache, v_cache (blocks, block_size, kv_heads,
head_size); slot_mapping int64 or int32 (tokens,): token t goes to flat slot s = block_id * block_size +
offset, that is k_cache[s // block_size, s % block_size] = k[t]; s = -1 skips the token (padding). Slots are
distinct. Nothing else in the caches changes.""",
        sig.write_kv_cache_key, sig.write_kv_cache_check, sig.write_kv_cache_spec, sig.write_kv_cache_guard,
        _ref("write_kv_cache"), _cases("write_kv_cache"),
        lambda device, dtype: CallSpec("write_kv_cache", dtype, device, 128, block_size=16),
        sig.write_kv_cache_rows,
        writes=(2, 3),
    ),
    OpSpec(
        "rotary_embedding", "layers", "rotary position embedding of queries and keys",
        ("head_size",),
        """rotary_embedding(q, k, positions, inv_freq) -> (q_rotated, k_rotated)
q (batch, heads, seq, head_size), k (batch, kv_heads, seq, head_size), positions int64 or int32
(batch, seq), inv_freq float32 (head_size / 2,) from mistralrs_torch.ops.rope_inv_freq (default, linear or
llama3 scaling). transformers' rotate-half convention: angle[p, i] = positions[p] * inv_freq[i], computed in
float32; cos/sin = cos/sin of the angles repeated twice along the head; out = x * cos + rotate_half(x) * sin
with rotate_half(x) = cat(-x[..., d/2:], x[..., :d/2]); cos and sin are cast to x's dtype first. Returns new
tensors of the inputs' shapes and dtype.""",
        sig.rotary_embedding_key, sig.rotary_embedding_check, sig.rotary_embedding_spec, sig.rotary_embedding_guard,
        _ref("rotary_embedding"), _cases("rotary_embedding"),
        lambda device, dtype: CallSpec("rotary_embedding", dtype, device, 128),
        sig.attention_rows,
    ),
    OpSpec(
        "rms_norm", "layers", "root-mean-square layer normalisation",
        (),
        """rms_norm(x, weight, eps) -> out
x (..., hidden), weight (hidden,). transformers' LlamaRMSNorm: y = x in float32 times
1 / sqrt(mean(x ** 2 over the last dimension) + eps), cast back to x's dtype, times weight; out has x's shape
and dtype.""",
        sig.rms_norm_key, sig.rms_norm_check, sig.rms_norm_spec, None,
        _ref("rms_norm"), _cases("rms_norm"),
        lambda device, dtype: CallSpec("rms_norm", dtype, device),
        sig.leading_rows,
    ),
    OpSpec(
        "linear", "matmul", "dense linear layer",
        ("in_features", "out_features"),
        """linear(x, weight, bias=None) -> x @ weight.T + bias
x (..., in), weight (out, in), bias (out,) or None, one floating dtype and device; out (..., out).""",
        sig.linear_key, sig.linear_check, sig.linear_spec, None,
        _ref("linear"), _cases("linear"),
        lambda device, dtype: CallSpec("linear", dtype, device, in_features=4096, out_features=4096),
        sig.leading_rows,
    ),
    OpSpec(
        "int8_linear", "matmul", "weight-only int8 linear, one scale per output channel",
        ("in_features", "out_features"),
        """int8_linear(x, weight, scale, bias=None) -> x @ (weight * scale[:, None]).T + bias
x (..., in) floating; weight int8 (out, in); scale floating (out,); bias (out,) of x's dtype or None.""",
        sig.int8_linear_key, sig.int8_linear_check, sig.int8_linear_spec, None,
        _ref("int8_linear"), _cases("int8_linear"),
        lambda device, dtype: CallSpec("int8_linear", dtype, device, in_features=4096, out_features=4096),
        sig.leading_rows,
    ),
    OpSpec(
        "quantized_linear", "matmul", "group-wise weight-only quantized linear (GGUF Q4_0, Q4_1, Q8_0)",
        ("in_features", "out_features", "bits", "group_size", "symmetric"),
        """prepared = runtime.prepare_quantized(weight, dtype)   # once per weight, at load
quantized_linear(x, prepared, bias=None) -> x @ dequantize(weight).T + bias
weight: a QuantizedWeight: codes uint8 (out, in) in [0, 2**bits), bits 4 or 8, scales float32
(out, in / group_size), offsets float32 of the same shape or None; symmetric: w = scale * (code - 2**(bits-1)),
asymmetric: w = scale * code + offset. A backend prepares it with prepare_quantized(weight, call, device),
returning its own layout (the runtime wraps it in a PreparedWeight); quantized_linear then receives that
PreparedWeight and never repacks per call. x (..., in) in the dtype the weight was prepared for; out (..., out).
Exact (to float32 rounding) for float32 and float16 activations; bfloat16 activations round the dequantized
weight to bfloat16 (relative error up to 2**-8).""",
        sig.quantized_linear_key, sig.quantized_linear_check, sig.quantized_linear_spec, None,
        _ref("quantized_linear"), _cases("quantized_linear"),
        lambda device, dtype: CallSpec("quantized_linear", dtype, device, in_features=4096, out_features=4096, bits=4,
                                       group_size=32, symmetric=False),
        sig.leading_rows,
        prepare="prepare_quantized",
    ),
)

_BY_NAME = {op.name: op for op in OPS}


def op_spec(name: str) -> OpSpec:
    """The registry entry of one op."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no op {name!r}: ops are {', '.join(_BY_NAME)}") from None
