"""cuda-int4: torch's tinygemm int4 kernel for group-wise 4-bit weights. Rules here; numerics on a GPU."""

from __future__ import annotations

import pytest

from mistralrs_torch import load_system
from mistralrs_torch.ops import CallSpec, op_spec
from mistralrs_torch.testing import run_case
from mistralrs_torch_cuda._facts import CudaFacts
from mistralrs_torch_cuda._int4 import CudaInt4Matmul


def _call(dtype: str = "bfloat16", bits: int = 4, group: int = 32, in_features: int = 576,
          device: str = "cuda") -> CallSpec:
    return CallSpec("quantized_linear", dtype, device, in_features=in_features, bits=bits, group_size=group,
                    symmetric=False)


def _backend(profile: str) -> CudaInt4Matmul:
    return CudaInt4Matmul(CudaFacts.from_snapshot(load_system(profile)))


def test_it_takes_4_bit_bfloat16_on_ampere_and_newer() -> None:
    assert _backend("a100").supports(_call()).ok
    assert _backend("h100").supports(_call(group=128, in_features=4096)).ok


@pytest.mark.parametrize(("call", "reason"), [
    (_call(dtype="float32"), "dtype float32 is not one of bfloat16 (torch's int4 GPU kernel takes bfloat16"),
    (_call(bits=8), "takes 4-bit weights, not 8-bit"),
    (_call(group=16), "group size 16 is not one of 32, 64, 128, 256"),
    (_call(in_features=48, group=32), "48 input features are not a multiple of 32"),
    (_call(device="cpu"), "runs on cuda only, not cpu"),
])
def test_it_refuses_what_the_kernel_cannot_run_with_the_reason(call: CallSpec, reason: str) -> None:
    support = _backend("a100").supports(call)
    assert not support.ok and reason in support.reason


def test_it_refuses_gpus_older_than_ampere() -> None:
    support = _backend("v100").supports(_call())
    assert not support.ok and "compute capability 8.0 or newer; this GPU has 7.0" in support.reason


def test_it_implements_only_the_quantized_op() -> None:
    backend = CudaInt4Matmul()
    assert backend.linear is None and backend.int8_linear is None and callable(backend.quantized_linear)


@pytest.mark.gpu
def test_every_claimed_quantized_case_matches_the_float64_reference_on_the_gpu() -> None:
    spec = op_spec("quantized_linear")
    backend = CudaInt4Matmul()
    results = [run_case(backend, spec, case, "bfloat16", "cuda:0") for case in spec.load_cases()()]
    assert any(r.status == "verified" for r in results), results
    assert all(r.status in ("verified", "refused") for r in results), [r for r in results if r.status == "failed"]
