"""Per op: the cheap key of a call, its CallSpec, and the checks of its arguments against the contract.

The runtime memoises its backend choice by ``key`` (a tuple of tensor metadata
that stays the same across decode steps), so ``check`` and ``spec`` run once per
signature, when it is first seen. ``guard`` runs on every call: shape relations
that change from call to call (batch, sequence lengths) and, where
``read_values`` is set, checks that read tensor values (block ids, sequence
lengths, slots): always on the CPU, elsewhere only under MISTRALRS_CHECK_INPUTS=1,
in doctor and in the kit, because reading values on a GPU synchronises it.

Every failed check raises :class:`~mistralrs_torch.OpInputError` naming the
argument, what it is, and what the op expects.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from mistralrs_torch._errors import OpInputError
from mistralrs_torch.ops._contract import CallSpec
from mistralrs_torch.ops._memo import TensorMemo

if TYPE_CHECKING:
    import torch

    from mistralrs_torch.ops._quantized import PreparedWeight

_FLOATS = ("float32", "float64", "bfloat16", "float16")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _fail(op: str, message: str) -> OpInputError:
    return OpInputError(f"{op}: {message}")


def _tensor(op: str, name: str, value: object, dims: int | tuple[int, ...] | None = None,
            dtypes: tuple[str, ...] | None = None) -> torch.Tensor:
    import torch

    if not isinstance(value, torch.Tensor):
        raise _fail(op, f"{name} must be a torch.Tensor, not {type(value).__name__}")
    allowed = (dims,) if isinstance(dims, int) else dims
    if allowed is not None and value.dim() not in allowed:
        raise _fail(op, f"{name} has {value.dim()} dimensions {tuple(value.shape)}; expected "
                        f"{' or '.join(map(str, allowed))}")
    if dtypes is not None and dtype_name(value.dtype) not in dtypes:
        raise _fail(op, f"{name} has dtype {dtype_name(value.dtype)}; expected one of {', '.join(dtypes)}")
    return value


def _same(op: str, reference: tuple[str, torch.Tensor], *others: tuple[str, torch.Tensor | None],
          dtype: bool = True) -> None:
    """The others share the reference tensor's device (and dtype)."""
    name, tensor = reference
    for other_name, other in others:
        if other is None:
            continue
        if other.device != tensor.device:
            raise _fail(op, f"{other_name} is on {other.device} but {name} is on {tensor.device}: move both to one "
                            "device (runtime.to_device)")
        if dtype and other.dtype != tensor.dtype:
            raise _fail(op, f"{other_name} has dtype {dtype_name(other.dtype)} but {name} has "
                            f"{dtype_name(tensor.dtype)}: cast them to one dtype")


def _scale(op: str, scale: object) -> None:
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise _fail(op, f"scale={scale!r} must be None (1/sqrt(head size)) or a finite number > 0")


def _heads(op: str, q_heads: int, kv_heads: int, kv_name: str) -> None:
    if kv_heads == 0 or q_heads % kv_heads:
        raise _fail(op, f"q has {q_heads} heads, which {kv_name}'s {kv_heads} key/value heads do not divide "
                        "(grouped-query attention needs a whole number of query heads per key/value head)")


# -- attention ------------------------------------------------------------------------------------------


def _mask_kind(causal: bool, mask: torch.Tensor | None) -> str:
    import torch

    kind = "none" if mask is None else "bool" if mask.dtype == torch.bool else "float"
    return ("causal+" + kind if kind != "none" else "causal") if causal else kind


def attention_key(q: Any, k: Any, v: Any, *, causal: bool = False, mask: Any = None,
                  scale: float | None = None) -> tuple[Any, ...]:
    q_shape, k_shape = q.shape, k.shape
    return (q.dtype, q.device, k.dtype, v.dtype, q.ndim, q_shape[1], k_shape[1], q_shape[-1], k_shape[-1],
            v.shape[-1], q_shape[-2] == k_shape[-2], causal, None if mask is None else mask.dtype, scale)


def attention_check(q: Any, k: Any, v: Any, *, causal: bool = False, mask: Any = None,
                    scale: float | None = None) -> None:
    op = "attention"
    for name, t in (("q", q), ("k", k), ("v", v)):
        _tensor(op, name, t, 4, _FLOATS)
    _same(op, ("q", q), ("k", k), ("v", v))
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise _fail(op, f"q, k and v have batch sizes {q.shape[0]}, {k.shape[0]}, {v.shape[0]}; they must be equal")
    if k.shape[1] != v.shape[1]:
        raise _fail(op, f"k has {k.shape[1]} heads but v has {v.shape[1]}; they must be equal")
    _heads(op, q.shape[1], k.shape[1], "k")
    if not (q.shape[-1] == k.shape[-1] == v.shape[-1]):
        raise _fail(op, f"q, k and v have head sizes {q.shape[-1]}, {k.shape[-1]}, {v.shape[-1]}; they must be equal")
    _scale(op, scale)
    if not isinstance(causal, bool):
        raise _fail(op, f"causal={causal!r} must be True or False")
    if mask is not None:
        _tensor(op, "mask", mask, (1, 2, 3, 4))
        _same(op, ("q", q), ("mask", mask), dtype=False)
        if mask.dtype != q.dtype and dtype_name(mask.dtype) != "bool":
            raise _fail(op, f"mask has dtype {dtype_name(mask.dtype)}; expected bool (True = may attend) or q's "
                            f"dtype {dtype_name(q.dtype)} (added to the scores)")
    attention_guard((q, k, v), {"causal": causal, "mask": mask}, False)


def attention_guard(args: tuple[Any, ...], kwargs: dict[str, Any], read_values: bool) -> None:
    q, k, v = args[:3]
    if k.shape[-2] != v.shape[-2]:
        raise _fail("attention", f"k has {k.shape[-2]} positions but v has {v.shape[-2]}; they must be equal")
    if kwargs.get("causal") and q.shape[-2] > k.shape[-2]:
        raise _fail("attention", f"causal attention of {q.shape[-2]} queries over {k.shape[-2]} keys: the mask "
                                 "aligns bottom-right, so a query longer than the keys would see nothing; "
                                 "pass at least as many keys as queries")
    mask = kwargs.get("mask")
    if mask is not None:
        expected = (q.shape[0], q.shape[1], q.shape[-2], k.shape[-2])
        shape = tuple(mask.shape)
        padded = (1,) * (4 - len(shape)) + shape
        if any(m not in (1, e) for m, e in zip(padded, expected, strict=True)):
            raise _fail("attention", f"mask of shape {shape} does not broadcast to (batch, heads, q len, k len) = "
                                     f"{expected}")


def attention_spec(q: Any, k: Any, v: Any, *, causal: bool = False, mask: Any = None,
                   scale: float | None = None) -> CallSpec:
    return CallSpec("attention", dtype_name(q.dtype), q.device.type, head_size=q.shape[-1],
                    mask=_mask_kind(causal, mask), gqa=q.shape[1] != k.shape[1], aligned=q.shape[-2] == k.shape[-2])


# -- paged attention ------------------------------------------------------------------------------------


def paged_attention_key(q: Any, k_cache: Any, v_cache: Any, block_table: Any, seq_lens: Any, *,
                        scale: float | None = None) -> tuple[Any, ...]:
    return (q.dtype, q.device, q.ndim, q.shape[1], q.shape[-1], k_cache.dtype, v_cache.dtype, k_cache.shape[1:],
            v_cache.shape[1:], block_table.dtype, seq_lens.dtype, scale)


def _cache_check(op: str, k_cache: Any, v_cache: Any, reference: tuple[str, Any]) -> None:
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        _tensor(op, name, t, 4, _FLOATS)
    _same(op, reference, ("k_cache", k_cache), ("v_cache", v_cache))
    if k_cache.shape != v_cache.shape:
        raise _fail(op, f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} must have one shape "
                        "(blocks, block size, kv heads, head size)")


def paged_attention_check(q: Any, k_cache: Any, v_cache: Any, block_table: Any, seq_lens: Any, *,
                          scale: float | None = None) -> None:
    op = "paged_attention"
    _tensor(op, "q", q, 4, _FLOATS)
    _cache_check(op, k_cache, v_cache, ("q", q))
    _heads(op, q.shape[1], k_cache.shape[2], "k_cache")
    if q.shape[-1] != k_cache.shape[-1]:
        raise _fail(op, f"q has head size {q.shape[-1]} but the caches {k_cache.shape[-1]}; they must be equal")
    _tensor(op, "block_table", block_table, 2, ("int32",))
    _tensor(op, "seq_lens", seq_lens, 1, ("int32",))
    _same(op, ("q", q), ("block_table", block_table), ("seq_lens", seq_lens), dtype=False)
    _scale(op, scale)
    paged_attention_guard((q, k_cache, v_cache, block_table, seq_lens), {}, False)


def _blocks_check(op: str, block_table: Any, seq_lens: Any, blocks: int, block_size: int, q_len: int) -> None:
    """Values: every sequence holds at least q_len tokens, within the blocks its row lists, all of which exist."""
    import torch

    lens = seq_lens.long()
    short = lens < max(q_len, 1)
    long = lens > block_table.shape[1] * block_size
    if bool(short.any()) or bool(long.any()):
        row = int((short | long).nonzero()[0, 0])
        length = int(lens[row])
        if bool(short[row]):
            raise _fail(op, f"seq_lens[{row}] = {length}: a sequence must hold at least its {max(q_len, 1)} new "
                            "token(s) (the query attends to its own tokens)")
        raise _fail(op, f"seq_lens[{row}] = {length} exceeds the {block_table.shape[1]} blocks of {block_size} its "
                        f"block_table row gives ({block_table.shape[1] * block_size} tokens)")
    needed = (lens + block_size - 1) // block_size
    used = torch.arange(block_table.shape[1], device=block_table.device)[None, :] < needed[:, None]
    bad = used & ((block_table < 0) | (block_table >= blocks))
    if bool(bad.any()):
        row, column = (int(i) for i in bad.nonzero()[0])
        raise _fail(op, f"block_table[{row}, {column}] = {int(block_table[row, column])} is outside the cache's "
                        f"blocks 0..{blocks - 1}")


#: Values found valid, so the layers of one step check their shared block table and lengths once.
_PAGED_CHECKED = TensorMemo()
_SLOTS_CHECKED = TensorMemo()


def paged_attention_guard(args: tuple[Any, ...], kwargs: dict[str, Any], read_values: bool) -> None:
    q, k_cache, _, block_table, seq_lens = args[:5]
    if not (q.shape[0] == block_table.shape[0] == seq_lens.shape[0]):
        raise _fail("paged_attention", f"q has batch {q.shape[0]}, block_table {block_table.shape[0]} rows and "
                                       f"seq_lens {seq_lens.shape[0]} entries; they must be equal (one per sequence)")
    if read_values:
        context = (k_cache.shape[0], k_cache.shape[1], q.shape[-2])
        # A check that raises remembers nothing: the next call checks again.
        _PAGED_CHECKED.get((block_table, seq_lens), context,
                           lambda: _blocks_check("paged_attention", block_table, seq_lens, *context))


def paged_attention_spec(q: Any, k_cache: Any, v_cache: Any, block_table: Any, seq_lens: Any, *,
                         scale: float | None = None) -> CallSpec:
    return CallSpec("paged_attention", dtype_name(q.dtype), q.device.type, head_size=q.shape[-1], mask="causal",
                    gqa=q.shape[1] != k_cache.shape[2], block_size=k_cache.shape[1])


# -- writes into the paged cache ------------------------------------------------------------------------


def write_kv_cache_key(k: Any, v: Any, k_cache: Any, v_cache: Any, slot_mapping: Any) -> tuple[Any, ...]:
    return (k.dtype, k.device, v.dtype, k.ndim, k.shape[1:], v.shape[1:], k_cache.dtype, v_cache.dtype,
            k_cache.shape[1:], v_cache.shape[1:], slot_mapping.dtype)


def write_kv_cache_check(k: Any, v: Any, k_cache: Any, v_cache: Any, slot_mapping: Any) -> None:
    op = "write_kv_cache"
    for name, t in (("k", k), ("v", v)):
        _tensor(op, name, t, 3, _FLOATS)
    _same(op, ("k", k), ("v", v))
    _cache_check(op, k_cache, v_cache, ("k", k))
    if k.shape[1:] != k_cache.shape[2:] or v.shape[1:] != k_cache.shape[2:]:
        raise _fail(op, f"k {tuple(k.shape)} and v {tuple(v.shape)} must be (tokens, kv heads, head size) with the "
                        f"caches' kv heads and head size {tuple(k_cache.shape[2:])}")
    _tensor(op, "slot_mapping", slot_mapping, 1, ("int64", "int32"))
    _same(op, ("k", k), ("slot_mapping", slot_mapping), dtype=False)
    write_kv_cache_guard((k, v, k_cache, v_cache, slot_mapping), {}, False)


def write_kv_cache_guard(args: tuple[Any, ...], kwargs: dict[str, Any], read_values: bool) -> None:
    k, v, k_cache, _, slot_mapping = args[:5]
    if not (k.shape[0] == v.shape[0] == slot_mapping.shape[0]):
        raise _fail("write_kv_cache", f"k has {k.shape[0]} tokens, v {v.shape[0]} and slot_mapping "
                                      f"{slot_mapping.shape[0]} slots; they must be equal (one slot per token)")
    if read_values and slot_mapping.numel():
        _SLOTS_CHECKED.get((slot_mapping,), (k_cache.shape[0], k_cache.shape[1]),
                           lambda: _slots_check(slot_mapping, k_cache.shape[0] * k_cache.shape[1]))


def _slots_check(slot_mapping: Any, slots: int) -> None:
    low, high = int(slot_mapping.min()), int(slot_mapping.max())
    if low < -1 or high >= slots:
        bad = low if low < -1 else high
        raise _fail("write_kv_cache", f"slot_mapping holds slot {bad}, outside the cache's slots 0..{slots - 1} "
                                      "(-1 skips a token): slot = block id * block size + offset")


def write_kv_cache_spec(k: Any, v: Any, k_cache: Any, v_cache: Any, slot_mapping: Any) -> CallSpec:
    return CallSpec("write_kv_cache", dtype_name(k.dtype), k.device.type, head_size=k.shape[-1],
                    block_size=k_cache.shape[1])


# -- layers ---------------------------------------------------------------------------------------------


def rms_norm_key(x: Any, weight: Any, eps: float) -> tuple[Any, ...]:
    return (x.dtype, x.device, weight.dtype, weight.shape, x.shape[-1], eps)


def rms_norm_check(x: Any, weight: Any, eps: float) -> None:
    op = "rms_norm"
    _tensor(op, "x", x, None, _FLOATS)
    _tensor(op, "weight", weight, 1, _FLOATS)
    _same(op, ("x", x), ("weight", weight), dtype=False)
    if x.dim() == 0 or weight.shape[0] != x.shape[-1]:
        raise _fail(op, f"weight has {weight.shape[0]} entries but x's last dimension is "
                        f"{x.shape[-1] if x.dim() else 'missing'}; they must be equal (the hidden size)")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise _fail(op, f"eps={eps!r} must be a finite number >= 0 (typically 1e-5 or 1e-6)")


def rms_norm_spec(x: Any, weight: Any, eps: float) -> CallSpec:
    return CallSpec("rms_norm", dtype_name(x.dtype), x.device.type)


def rotary_embedding_key(q: Any, k: Any, positions: Any, inv_freq: Any) -> tuple[Any, ...]:
    return (q.dtype, q.device, k.dtype, q.ndim, k.ndim, q.shape[-1], k.shape[-1], positions.dtype, positions.ndim,
            inv_freq.dtype, inv_freq.shape)


def rotary_embedding_check(q: Any, k: Any, positions: Any, inv_freq: Any) -> None:
    op = "rotary_embedding"
    _tensor(op, "q", q, 4, _FLOATS)
    _tensor(op, "k", k, 4, _FLOATS)
    _same(op, ("q", q), ("k", k))
    _tensor(op, "positions", positions, 2, ("int64", "int32"))
    _tensor(op, "inv_freq", inv_freq, 1, ("float32", "float64"))
    _same(op, ("q", q), ("positions", positions), ("inv_freq", inv_freq), dtype=False)
    head = q.shape[-1]
    if head % 2 or k.shape[-1] != head:
        raise _fail(op, f"q and k head sizes {head} and {k.shape[-1]} must be one even number")
    if inv_freq.shape[0] != head // 2:
        raise _fail(op, f"inv_freq has {inv_freq.shape[0]} frequencies; head size {head} needs {head // 2} "
                        "(see mistralrs_torch.ops.rope_inv_freq)")
    rotary_embedding_guard((q, k, positions, inv_freq), {}, False)


def rotary_embedding_guard(args: tuple[Any, ...], kwargs: dict[str, Any], read_values: bool) -> None:
    q, k, positions = args[:3]
    expected = (q.shape[0], q.shape[2])
    if tuple(positions.shape) != expected or (k.shape[0], k.shape[2]) != expected:
        raise _fail("rotary_embedding", f"positions {tuple(positions.shape)}, q {tuple(q.shape)} and k "
                                        f"{tuple(k.shape)} must agree on (batch, sequence) = {expected}")


def rotary_embedding_spec(q: Any, k: Any, positions: Any, inv_freq: Any) -> CallSpec:
    return CallSpec("rotary_embedding", dtype_name(q.dtype), q.device.type, head_size=q.shape[-1])


# -- matmul ---------------------------------------------------------------------------------------------


def linear_key(x: Any, weight: Any, bias: Any = None) -> tuple[Any, ...]:
    return (x.dtype, x.device, weight.shape)


def _linear_shapes(op: str, x: Any, in_features: int, out_features: int, bias: Any, dtype: Any) -> None:
    if x.dim() == 0 or x.shape[-1] != in_features:
        raise _fail(op, f"x has {x.shape[-1] if x.dim() else 'no'} input features but the weight takes "
                        f"{in_features}: x must be (..., {in_features})")
    if bias is not None:
        _tensor(op, "bias", bias, 1)
        _same(op, ("x", x), ("bias", bias), dtype=False)
        if bias.shape[0] != out_features or bias.dtype != dtype:
            raise _fail(op, f"bias must be ({out_features},) of dtype {dtype_name(dtype)}, not "
                            f"{tuple(bias.shape)} of {dtype_name(bias.dtype)}")


def linear_check(x: Any, weight: Any, bias: Any = None) -> None:
    op = "linear"
    _tensor(op, "x", x, None, _FLOATS)
    _tensor(op, "weight", weight, 2, _FLOATS)
    _same(op, ("x", x), ("weight", weight))
    _linear_shapes(op, x, weight.shape[1], weight.shape[0], bias, x.dtype)


def linear_spec(x: Any, weight: Any, bias: Any = None) -> CallSpec:
    return CallSpec("linear", dtype_name(x.dtype), x.device.type, in_features=weight.shape[1],
                    out_features=weight.shape[0])


def int8_linear_key(x: Any, weight: Any, scale: Any, bias: Any = None) -> tuple[Any, ...]:
    return (x.dtype, x.device, weight.dtype, weight.shape)


def int8_linear_check(x: Any, weight: Any, scale: Any, bias: Any = None) -> None:
    op = "int8_linear"
    _tensor(op, "x", x, None, _FLOATS)
    _tensor(op, "weight", weight, 2, ("int8",))
    _tensor(op, "scale", scale, 1, _FLOATS)
    _same(op, ("x", x), ("weight", weight), ("scale", scale), dtype=False)
    if scale.shape[0] != weight.shape[0]:
        raise _fail(op, f"scale has {scale.shape[0]} entries but the weight {weight.shape[0]} output channels: "
                        "one scale per output channel")
    _linear_shapes(op, x, weight.shape[1], weight.shape[0], bias, x.dtype)


def int8_linear_spec(x: Any, weight: Any, scale: Any, bias: Any = None) -> CallSpec:
    return CallSpec("int8_linear", dtype_name(x.dtype), x.device.type, in_features=weight.shape[1],
                    out_features=weight.shape[0])


def quantized_linear_key(x: Any, weight: PreparedWeight, bias: Any = None) -> tuple[Any, ...]:
    return (x.dtype, x.device, weight.backend, weight.call)


def quantized_linear_check(x: Any, weight: PreparedWeight, bias: Any = None) -> None:
    from mistralrs_torch.ops._quantized import PreparedWeight

    op = "quantized_linear"
    _tensor(op, "x", x, None, _FLOATS)
    if not isinstance(weight, PreparedWeight):
        raise _fail(op, f"weight must be what runtime.prepare_quantized returned (a PreparedWeight), not "
                        f"{type(weight).__name__}: prepare each QuantizedWeight once at load")
    if dtype_name(x.dtype) != weight.call.dtype or x.device.type != weight.call.device:
        raise _fail(op, f"x is {dtype_name(x.dtype)} on {x.device.type} but the weight was prepared for "
                        f"{weight.call.dtype} on {weight.call.device}: prepare it with the activations' dtype")
    _linear_shapes(op, x, weight.shape[1], weight.shape[0], bias, x.dtype)


def quantized_linear_spec(x: Any, weight: PreparedWeight, bias: Any = None) -> CallSpec:
    return weight.call


def quantized_weight_check(weight: Any) -> None:
    """A QuantizedWeight whose codes, scales, offsets, bits and group size agree."""
    from mistralrs_torch.ops._quantized import QuantizedWeight

    op = "prepare_quantized"
    if not isinstance(weight, QuantizedWeight):
        raise _fail(op, f"weight must be a QuantizedWeight, not {type(weight).__name__}")
    if weight.bits not in (4, 8):
        raise _fail(op, f"bits={weight.bits!r} is not supported: 4 or 8")
    codes = _tensor(op, "weight.codes", weight.codes, 2, ("uint8",))
    out, in_features = codes.shape
    if not isinstance(weight.group_size, int) or weight.group_size <= 0 or in_features % weight.group_size:
        raise _fail(op, f"group_size={weight.group_size!r} must be a positive divisor of the {in_features} input "
                        "features")
    groups = (out, in_features // weight.group_size)
    for name, table in (("weight.scales", weight.scales), ("weight.offsets", weight.offsets)):
        if table is None and name == "weight.offsets":
            continue
        shape = tuple(_tensor(op, name, table, 2, _FLOATS).shape)
        if shape != groups:
            raise _fail(op, f"{name} has shape {shape}; {out} outputs in groups of {weight.group_size} "
                            f"need {groups}")


# -- the token count of a call, for measured selection's buckets ------------------------------------------


def attention_rows(q: Any, *args: Any, **kwargs: Any) -> int:
    return int(q.shape[0]) * int(q.shape[-2])


def write_kv_cache_rows(k: Any, *args: Any, **kwargs: Any) -> int:
    return int(k.shape[0])


def leading_rows(x: Any, *args: Any, **kwargs: Any) -> int:
    """Rows of an activation (..., features): every dimension but the last."""
    return x.numel() // max(1, x.shape[-1]) if x.dim() else 1
