"""The accelerate plugin proves torch's BLAS is Accelerate before claiming any call."""

from __future__ import annotations

import sys

import pytest
import torch

from mistralrs_torch.ops import CallSpec
from mistralrs_torch.system import blas_info
from mistralrs_torch_accelerate import plugin
from mistralrs_torch_accelerate._backend import AccelerateMatmul, is_accelerate


def test_blas_names_that_mean_accelerate() -> None:
    assert is_accelerate("accelerate") and is_accelerate("vecLib")
    assert not is_accelerate("mkl") and not is_accelerate("openblas")


@pytest.mark.skipif(is_accelerate(blas_info().blas), reason="this torch really uses Accelerate")
def test_refuses_every_call_where_torch_blas_is_something_else() -> None:
    refused = AccelerateMatmul().supports(CallSpec("linear", "float32", "cpu"))
    assert not refused.ok
    assert f"torch's BLAS is {blas_info().blas}, not Apple Accelerate" in refused.reason


@pytest.mark.skipif(
    sys.platform != "darwin" or not is_accelerate(blas_info().blas), reason="needs macOS torch on Accelerate"
)
def test_linear_through_accelerate_matches_float64() -> None:
    backend = AccelerateMatmul()
    assert backend.supports(CallSpec("linear", "float32", "cpu")).ok
    assert not backend.supports(CallSpec("linear", "bfloat16", "cpu")).ok
    x, w = torch.randn(4, 32), torch.randn(16, 32)
    torch.testing.assert_close(backend.linear(x, w).double(), x.double() @ w.double().T, rtol=1e-5, atol=1e-5)


def test_no_backend_unless_accelerate_is_active() -> None:
    assert plugin.mistralrs_matmul_backends(frozenset({"cpu"})) == ()
