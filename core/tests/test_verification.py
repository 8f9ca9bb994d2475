"""The op registry and the one verification engine doctor and the kit share: cases, references, tolerances."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mistralrs_torch.generic import GenericAttention, GenericLayers, GenericMatmul, dense_attention
from mistralrs_torch.ops import BACKEND_PROTOCOLS, OPS, CallSpec, Support, op_methods, op_spec
from mistralrs_torch.testing import TOLERANCES, run_case

GENERIC = {"attention": GenericAttention(), "matmul": GenericMatmul(), "layers": GenericLayers()}


def test_every_op_is_one_registry_entry_with_everything_it_needs() -> None:
    names = [op.name for op in OPS]
    assert len(names) == len(set(names))
    for op in OPS:
        assert op.kind in BACKEND_PROTOCOLS and op.name in op_methods(BACKEND_PROTOCOLS[op.kind])
        assert set(op.signature) <= set(CallSpec._fields[3:]), op.name
        assert callable(op.load_reference()) and list(op.load_cases()()), op.name
        assert any(case.smoke for case in op.load_cases()()), f"{op.name} has no smoke case for doctor"
        assert callable(getattr(GENERIC[op.kind], op.name)), f"the generic backend lacks {op.name}"
        probe = op.probe("cpu", "float32")
        assert probe.op == op.name and GENERIC[op.kind].supports(probe).ok
        assert op.contract.startswith("prepared = " if op.prepare else f"{op.name}("), op.name


def test_call_specs_are_hashable_values_usable_as_cache_keys() -> None:
    a = CallSpec("attention", "float32", "cpu", 64, "causal", gqa=True, aligned=False)
    b = CallSpec("attention", "float32", "cpu", 64, "causal", gqa=True, aligned=False)
    assert a == b and hash(a) == hash(b) and len({a: 1, b: 2}) == 1
    assert a.describe() == "float32 on cpu, head size 64, mask causal, gqa, not aligned"
    with pytest.raises(AttributeError):
        a.dtype = "bfloat16"  # type: ignore[misc]  # writing to a frozen object on purpose: the refusal is what is tested


@pytest.mark.parametrize("op", [op.name for op in OPS])
@pytest.mark.parametrize("dtype", list(TOLERANCES))
def test_the_generic_backend_passes_every_case_of_every_op(op: str, dtype: str) -> None:
    spec = op_spec(op)
    for case in spec.load_cases()():
        result = run_case(GENERIC[spec.kind], spec, case, dtype, "cpu")
        assert result.status == "verified", result


class _ScaledAttention:
    """A plausible bug: the softmax scale off by a factor (1.01 = a 1% error)."""

    name, feature, dispatch_priority = "scaled", "test", 1

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def supports(self, call: CallSpec) -> Support:
        return Support(True)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                  mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
        return dense_attention(q, k, v, causal=causal, mask=mask, scale=(scale or q.shape[-1] ** -0.5) * self.factor)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "float64"])
@pytest.mark.parametrize("factor", [1.01, 0.99])
def test_a_one_percent_softmax_scale_error_fails_at_every_dtype(dtype: str, factor: float) -> None:
    spec = op_spec("attention")
    smoke = [case for case in spec.load_cases()() if case.smoke]
    results = [run_case(_ScaledAttention(factor), spec, case, dtype, "cpu") for case in smoke]
    assert any(r.status == "failed" and "rms error" in r.detail for r in results), results
    exact = [run_case(_ScaledAttention(1.0), spec, case, dtype, "cpu") for case in smoke]
    assert all(r.status == "verified" for r in exact), exact


class _Float32Inside(GenericMatmul):
    """Computes float64 calls in float32, as many real kernels do: the float64 tolerance must allow it."""

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Any:
        out = super().linear(x.float(), weight.float(), None if bias is None else bias.float())
        return out.to(x.dtype)


def test_a_backend_computing_float64_in_float32_meets_the_float64_tolerance() -> None:
    spec = op_spec("linear")
    results = [run_case(_Float32Inside(), spec, case, "float64", "cpu") for case in spec.load_cases()()]
    assert all(r.status == "verified" for r in results), results


def test_a_claimed_call_that_raises_or_returns_garbage_fails_with_what_went_wrong() -> None:
    class Broken(GenericMatmul):
        def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Any:
            return torch.full((x.shape[0], weight.shape[0]), float("nan"), dtype=x.dtype)

        def int8_linear(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("kernel exploded")

    linear, int8 = op_spec("linear"), op_spec("int8_linear")
    case = next(iter(linear.load_cases()()))
    assert "NaN or infinity" in run_case(Broken(), linear, case, "float32", "cpu").detail
    case = next(iter(int8.load_cases()()))
    assert "raised RuntimeError: kernel exploded" in run_case(Broken(), int8, case, "float32", "cpu").detail


def test_a_refusal_needs_a_reason_and_a_supports_that_raises_fails() -> None:
    class Mute(GenericMatmul):
        def supports(self, call: CallSpec) -> Support:
            if call.dtype == "float16":
                raise ValueError("no idea")
            return Support(False, "")

    spec = op_spec("linear")
    case = next(iter(spec.load_cases()()))
    assert run_case(Mute(), spec, case, "float32", "cpu").detail == "refused without a reason"
    assert "supports() raised ValueError" in run_case(Mute(), spec, case, "float16", "cpu").detail


def test_an_in_place_op_is_judged_by_what_it_writes() -> None:
    class OffByOne(GenericAttention):
        def write_kv_cache(self, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           slot_mapping: torch.Tensor) -> None:
            super().write_kv_cache(k, v, k_cache, v_cache, torch.where(slot_mapping >= 0, slot_mapping + 1, -1))

    spec = op_spec("write_kv_cache")
    case = next(iter(spec.load_cases()()))
    result = run_case(OffByOne(), spec, case, "float32", "cpu")
    assert result.status == "failed" and "max error" in result.detail
