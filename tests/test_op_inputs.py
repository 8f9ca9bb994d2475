"""Every op checks its arguments against the contract: a bad one is an OpInputError naming it, never a deep
torch error, a traceback from project code, or a silent wrong answer."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mistralrs_torch import ConfigError, MistralrsError, Runtime, load_system
from mistralrs_torch._errors import OpInputError, UnsupportedCallError
from mistralrs_torch.ops import QuantizedWeight, rope_inv_freq


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return Runtime.create(paged_attention=True, environ={})


def _qkv(batch: int = 2, heads: int = 4, kv: int = 2, q_len: int = 3, k_len: int = 5, head: int = 8) -> Any:
    return torch.randn(batch, heads, q_len, head), torch.randn(batch, kv, k_len, head), torch.randn(batch, kv, k_len,
                                                                                                      head)


def _paged(batch: int = 2, blocks: int = 6, block: int = 4) -> tuple[torch.Tensor, ...]:
    q = torch.randn(batch, 4, 1, 8)
    cache = torch.randn(blocks, block, 2, 8)
    table = torch.arange(batch * 2, dtype=torch.int32).reshape(batch, 2)
    return q, cache, cache.clone(), table, torch.tensor([5] * batch, dtype=torch.int32)


@pytest.mark.parametrize(("change", "message"), [
    (lambda q, k, v: (q, k, v[:, :, :4]), "k has 5 positions but v has 4"),
    (lambda q, k, v: (q[:, :3], k, v), "q has 3 heads, which k's 2 key/value heads do not divide"),
    (lambda q, k, v: (q, k, v[:, :1]), "k has 2 heads but v has 1"),
    (lambda q, k, v: (q[0], k, v), "q has 3 dimensions (4, 3, 8); expected 4"),
    (lambda q, k, v: (q, k.double(), v), "k has dtype float64 but q has float32"),
    (lambda q, k, v: (q.int(), k, v), "q has dtype int32; expected one of"),
    (lambda q, k, v: (q, k[..., :4], v), "q, k and v have head sizes 8, 4, 8"),
    (lambda q, k, v: (q, k[:1], v), "q, k and v have batch sizes 2, 1, 2"),
    (lambda q, k, v: (q, [1, 2], v), "k must be a torch.Tensor, not list"),
])
def test_attention_arguments_are_checked(runtime: Runtime, change: Any, message: str) -> None:
    with pytest.raises(OpInputError, match=f"^attention: {message}".replace("(", r"\(").replace(")", r"\)")):
        runtime.attention(*change(*_qkv()), causal=True)


@pytest.mark.parametrize("scale", [float("nan"), 0.0, -1.0, float("inf"), "0.1"])
def test_a_scale_that_is_not_a_positive_number_is_refused(runtime: Runtime, scale: Any) -> None:
    with pytest.raises(OpInputError, match="scale="):
        runtime.attention(*_qkv(), scale=scale)


def test_a_causal_query_longer_than_its_keys_and_a_mask_that_does_not_broadcast(runtime: Runtime) -> None:
    with pytest.raises(OpInputError, match="a query longer than the keys would see nothing"):
        runtime.attention(*_qkv(q_len=6, k_len=5), causal=True)
    with pytest.raises(OpInputError, match=r"mask of shape \(2, 1, 3, 4\) does not broadcast"):
        runtime.attention(*_qkv(), mask=torch.ones(2, 1, 3, 4, dtype=torch.bool))
    with pytest.raises(OpInputError, match="mask has dtype int64"):
        runtime.attention(*_qkv(), mask=torch.ones(3, 5, dtype=torch.int64))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda a: (*a[:3], a[3].clone().fill_(-5), a[4]),
            r"block_table\[0, 0\] = -5 is outside the cache's blocks 0..5",
        ),
        (lambda a: (*a[:3], a[3].float() + 0.7, a[4]), "block_table has dtype float32; expected one of int32"),
        (lambda a: (*a[:4], torch.tensor([9, 5], dtype=torch.int32)), r"seq_lens\[0\] = 9 exceeds the 2 blocks of 4"),
        (lambda a: (*a[:4], torch.tensor([0, 5], dtype=torch.int32)), r"seq_lens\[0\] = 0: a sequence must hold"),
        (lambda a: (*a[:4], torch.tensor([-3, 5], dtype=torch.int32)), r"seq_lens\[0\] = -3"),
        (lambda a: (*a[:4], torch.tensor([5], dtype=torch.int32)), "q has batch 2, block_table 2 rows and seq_lens 1"),
        (lambda a: (a[0][:1], *a[1:]), "q has batch 1, block_table 2 rows and seq_lens 2"),
        (lambda a: (*a[:3], a[3], a[4].long()), "seq_lens has dtype int64; expected one of int32"),
        (
            lambda a: (a[0], a[1], a[2][:, :2], *a[3:]),
            r"k_cache \(6, 4, 2, 8\) and v_cache \(6, 2, 2, 8\) must have one shape",
        ),
    ],
)
def test_paged_attention_arguments_and_values_are_checked(runtime: Runtime, change: Any, message: str) -> None:
    with pytest.raises(OpInputError, match=message):
        runtime.paged_attention(*change(_paged()))


def test_a_valid_paged_call_after_an_invalid_one_still_runs(runtime: Runtime) -> None:
    good = _paged()
    with pytest.raises(OpInputError):
        runtime.paged_attention(*good[:4], torch.tensor([9, 5], dtype=torch.int32))
    assert runtime.paged_attention(*good).shape == good[0].shape


def test_kv_cache_writes_are_checked(runtime: Runtime) -> None:
    cache = torch.zeros(3, 4, 2, 8)
    k = torch.randn(2, 2, 8)
    with pytest.raises(OpInputError, match=r"slot_mapping holds slot 12, outside the cache's slots 0..11"):
        runtime.write_kv_cache(k, k, cache, cache.clone(), torch.tensor([0, 12]))
    with pytest.raises(OpInputError, match="slot_mapping holds slot -2"):
        runtime.write_kv_cache(k, k, cache, cache.clone(), torch.tensor([-2, 1]))
    with pytest.raises(OpInputError, match="k has 2 tokens, v 2 and slot_mapping 3 slots"):
        runtime.write_kv_cache(k, k, cache, cache.clone(), torch.tensor([0, 1, 2]))
    with pytest.raises(OpInputError, match=r"must be \(tokens, kv heads, head size\)"):
        runtime.write_kv_cache(torch.randn(2, 3, 8), torch.randn(2, 3, 8), cache, cache.clone(), torch.tensor([0, 1]))


def test_matmul_arguments_are_checked(runtime: Runtime) -> None:
    x, w = torch.randn(3, 8), torch.randn(5, 8)
    with pytest.raises(OpInputError, match=r"x has 7 input features but the weight takes 8: x must be \(\.\.\., 8\)"):
        runtime.linear(x[:, :7], w)
    with pytest.raises(OpInputError, match=r"bias must be \(5,\) of dtype float32, not \(4,\)"):
        runtime.linear(x, w, torch.randn(4))
    with pytest.raises(OpInputError, match="weight has dtype float32; expected one of int8"):
        runtime.int8_linear(x, w, torch.ones(5))
    with pytest.raises(OpInputError, match="scale has 4 entries but the weight 5 output channels"):
        runtime.int8_linear(x, w.to(torch.int8), torch.ones(4))
    with pytest.raises(OpInputError, match=r"weight must be what runtime.prepare_quantized returned"):
        runtime.quantized_linear(x, w)


def test_quantized_weights_are_checked_when_prepared(runtime: Runtime) -> None:
    codes = torch.randint(0, 16, (4, 64), dtype=torch.uint8)
    with pytest.raises(OpInputError, match="bits=3 is not supported: 4 or 8"):
        runtime.prepare_quantized(QuantizedWeight(codes, torch.ones(4, 2), None, 3, 32), torch.float32)
    with pytest.raises(OpInputError, match="group_size=48 must be a positive divisor of the 64 input features"):
        runtime.prepare_quantized(QuantizedWeight(codes, torch.ones(4, 2), None, 4, 48), torch.float32)
    with pytest.raises(
        OpInputError, match=r"weight.scales has shape \(4, 3\); 4 outputs in groups of 32 need \(4, 2\)"
    ):
        runtime.prepare_quantized(QuantizedWeight(codes, torch.ones(4, 3), None, 4, 32), torch.float32)
    prepared = runtime.prepare_quantized(QuantizedWeight(codes, torch.ones(4, 2), None, 4, 32), torch.float32)
    with pytest.raises(OpInputError, match="x is bfloat16 on cpu but the weight was prepared for float32 on cpu"):
        runtime.quantized_linear(torch.randn(2, 64, dtype=torch.bfloat16), prepared)


def test_layer_arguments_are_checked(runtime: Runtime) -> None:
    with pytest.raises(OpInputError, match="weight has 7 entries but x's last dimension is 8"):
        runtime.rms_norm(torch.randn(2, 8), torch.ones(7), 1e-5)
    with pytest.raises(OpInputError, match="eps=nan must be a finite number >= 0"):
        runtime.rms_norm(torch.randn(2, 8), torch.ones(8), float("nan"))
    q, k, _ = _qkv()
    positions = torch.arange(3).expand(2, 3)
    with pytest.raises(OpInputError, match="inv_freq has 3 frequencies; head size 8 needs 4"):
        runtime.rotary_embedding(q, k[:, :, :3], positions, torch.ones(3))
    with pytest.raises(OpInputError, match=r"positions \(2, 4\), q \(2, 4, 3, 8\) and k"):
        runtime.rotary_embedding(q, k[:, :, :3], torch.arange(4).expand(2, 4), rope_inv_freq(8, 10000.0))


def test_a_wrong_argument_count_is_named_with_the_ops_parameters(runtime: Runtime) -> None:
    with pytest.raises(
        OpInputError,
        match=r"linear: missing a required argument: 'weight'; the op takes \(x, weight, "
        r"bias\)",
    ):
        runtime.linear(torch.randn(2, 2))


def test_runtime_create_validates_its_own_arguments() -> None:
    with pytest.raises(ConfigError, match="paged_attention='no' must be True, False or None"):
        Runtime.create(paged_attention="no", environ={})  # type: ignore[arg-type]  # a wrong type on purpose: the refusal is what is tested
    with pytest.raises(ConfigError, match="features=3 must be a string"):
        Runtime.create(features=3, environ={})  # type: ignore[arg-type]  # a wrong type on purpose: the refusal is what is tested


def test_a_profile_of_another_machine_is_a_dry_run_only() -> None:
    with pytest.raises(ConfigError, match=r"resolved for h100, another machine than this one.*dry_run=True"):
        Runtime.create(system=load_system("h100"), environ={})
    dry = Runtime.create(system=load_system("h100"), environ={}, dry_run=True)
    assert dry.explain()["ops"]["attention"]["order"][0] == "flash-attn-v3"
    with pytest.raises(UnsupportedCallError, match="dry run for h100"):
        dry.linear(torch.randn(2, 2), torch.randn(2, 2))


_shapes = st.lists(st.integers(0, 5), min_size=0, max_size=5)


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    q=_shapes,
    k=_shapes,
    v=_shapes,
    causal=st.booleans(),
    dtypes=st.tuples(*[st.sampled_from([torch.float32, torch.bfloat16, torch.int64, torch.bool])] * 3),
    scale=st.one_of(st.none(), st.floats(allow_nan=True)),
)
def test_any_attention_arguments_give_a_result_or_an_op_input_error(
    runtime: Runtime, q: list[int], k: list[int], v: list[int], causal: bool, dtypes: Any, scale: float | None
) -> None:
    tensors = [torch.zeros(shape, dtype=dtype) for shape, dtype in zip((q, k, v), dtypes, strict=True)]
    try:
        out = runtime.attention(*tensors, causal=causal, scale=scale)
    except OpInputError as exc:
        assert str(exc).startswith("attention: ")
    else:
        assert out.shape == tensors[0].shape
        assert scale is None or (math.isfinite(scale) and scale > 0)


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batch=st.integers(0, 3),
    rows=st.integers(0, 3),
    lens=st.lists(st.integers(-3, 12), max_size=4),
    ids=st.lists(st.integers(-6, 8), min_size=0, max_size=12),
    width=st.integers(0, 3),
)
def test_any_paged_block_table_gives_a_result_or_an_op_input_error(
    runtime: Runtime, batch: int, rows: int, lens: list[int], ids: list[int], width: int
) -> None:
    q = torch.randn(batch, 4, 1, 8)
    cache = torch.randn(6, 4, 2, 8)
    table = torch.tensor((ids + [0] * (rows * width))[: rows * width], dtype=torch.int32).reshape(rows, width)
    try:
        out = runtime.paged_attention(q, cache, cache, table, torch.tensor(lens, dtype=torch.int32))
    except OpInputError as exc:
        assert str(exc).startswith("paged_attention: ")
    else:
        assert out.shape == q.shape and torch.isfinite(out).all()
        assert batch == rows == len(lens) and all(1 <= n <= width * 4 for n in lens)


def test_every_error_is_the_projects_own(runtime: Runtime) -> None:
    assert issubclass(OpInputError, MistralrsError) and issubclass(OpInputError, ValueError)
