"""The mkl plugin for real on this machine (torch built with MKL): verification, fallbacks, threads."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import mistralrs_torch
from mistralrs_torch.ops import CallSpec
from mistralrs_torch.runtime import Runtime
from mistralrs_torch.system import BlasInfo, blas_info
from mistralrs_torch_mkl import _backend
from mistralrs_torch_mkl._backend import MKLMatmul

pytestmark = pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="torch here is not built with MKL")

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def _relative_error(got: torch.Tensor, expected: np.ndarray) -> float:
    return float(np.abs(got.double().numpy() - expected).max() / np.abs(expected).max())


def _linear_ref(x: torch.Tensor, w: np.ndarray, b: torch.Tensor | None) -> np.ndarray:
    out = x.double().numpy() @ w.T
    return out if b is None else out + b.double().numpy()


@pytest.fixture
def backend() -> MKLMatmul:
    return MKLMatmul({}, cpu_flags=())


def test_torch_blas_is_proved_to_be_mkl_with_its_version() -> None:
    info = blas_info()
    assert info.is_mkl and info.blas == "mkl"
    assert info.mkl_version.count(".") >= 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("native_bf16", [False, True])
def test_linear_matches_float64_reference(backend: MKLMatmul, dtype: torch.dtype, native_bf16: bool) -> None:
    backend.native_bf16 = native_bf16
    gen = torch.Generator().manual_seed(1)
    x, w, b = (torch.randn(5, 48, generator=gen).to(dtype), torch.randn(40, 48, generator=gen).to(dtype),
               torch.randn(40, generator=gen).to(dtype))
    kernel = backend.kernel_for(CallSpec("linear", str(dtype)[6:], "cpu")) or backend.linear
    out = kernel(x, w, b)
    assert out.dtype == dtype and out.shape == (5, 40)
    assert _relative_error(out, _linear_ref(x, w.double().numpy(), b)) < TOL[dtype]


def test_bf16_linear_runs_in_fp32_only_without_native_bf16(backend: MKLMatmul) -> None:
    call = CallSpec("linear", "bfloat16", "cpu")
    assert backend.kernel_for(call) is _backend._bf16_linear
    assert MKLMatmul({}, cpu_flags=("avx512_bf16",)).kernel_for(call) is None
    assert backend.kernel_for(CallSpec("linear", "float32", "cpu")) is None


def test_bf16_linear_goes_through_fp32_only_where_converting_the_weight_pays(backend: MKLMatmul) -> None:
    # The crossovers measured by benchmarks/cpu_gemm.py: a projection from 4 rows, the lm_head from about 24.
    projection, lm_head = 1536 * 576, 49152 * 576
    assert [_backend.float32_pays(rows, projection) for rows in (1, 3, 4, 128)] == [False, False, True, True]
    assert [_backend.float32_pays(rows, lm_head) for rows in (1, 16, 30, 31, 128)] == [False, False, False, True,
                                                                                       True]
    gen = torch.Generator().manual_seed(3)
    w, b = torch.randn(40, 48, generator=gen).bfloat16(), torch.randn(40, generator=gen).bfloat16()
    for rows in (1, 2, 8):  # both routes meet the float64 reference
        x = torch.randn(rows, 48, generator=gen).bfloat16()
        out = _backend._bf16_linear(x, w, b)
        assert out.dtype == torch.bfloat16
        assert _relative_error(out, _linear_ref(x, w.double().numpy(), b)) < TOL[torch.bfloat16]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("in_features", [32, 64, 40])
def test_int8_linear_matches_dequantized_float64(backend: MKLMatmul, dtype: torch.dtype, in_features: int) -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, in_features, generator=gen).to(dtype)  # 3-D activations are flattened and restored
    w = torch.randint(-127, 128, (24, in_features), generator=gen, dtype=torch.int8)
    scale = (torch.rand(24, generator=gen) * 0.01 + 0.001).to(dtype)
    bias = torch.randn(24, generator=gen).to(dtype)
    assert backend.supports(CallSpec("int8_linear", str(dtype)[6:], "cpu", in_features=in_features)).ok
    out = backend.int8_linear(x, w, scale, bias)
    assert out.shape == (2, 3, 24) and out.dtype == dtype
    dense = w.double().numpy() * scale.double().numpy()[:, None]
    expected = _linear_ref(x.reshape(6, in_features), dense, bias).reshape(2, 3, 24)
    assert _relative_error(out, expected) < TOL[dtype]


def test_refuses_what_it_cannot_run_with_reasons(backend: MKLMatmul) -> None:
    odd = backend.supports(CallSpec("int8_linear", "bfloat16", "cpu", in_features=33))
    assert not odd.ok and "divisible by 8" in odd.reason and "33" in odd.reason
    assert "CPU only" in backend.supports(CallSpec("linear", "float32", "cuda")).reason
    assert "float16" in backend.supports(CallSpec("linear", "float16", "cpu")).reason
    assert "int8 linear takes" in backend.supports(CallSpec("int8_linear", "float64", "cpu", in_features=8)).reason


def test_a_torch_without_mkl_blas_makes_every_call_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_backend, "blas_info", lambda: BlasInfo(False, "openblas", "", "AVX2"))
    refused = MKLMatmul({}).supports(CallSpec("linear", "float32", "cpu"))
    assert not refused.ok
    assert "openblas, not MKL" in refused.reason and "MKL not found" in refused.reason


def test_runtime_binds_mkl_and_records_the_visible_fallback() -> None:
    runtime = Runtime.create(environ={})
    assert [b.name for b in runtime.matmul_backends][:1] == ["mkl-matmul"]
    x, w = torch.randn(2, 16), torch.randn(8, 16)
    torch.testing.assert_close(runtime.linear(x, w), x @ w.T)
    assert runtime.bindings[-1].chosen == "mkl-matmul" and not runtime.fallbacks
    w8 = torch.randint(-127, 128, (8, 33), dtype=torch.int8)
    out = runtime.int8_linear(torch.randn(2, 33, dtype=torch.bfloat16), w8, torch.rand(8, dtype=torch.bfloat16))
    assert out.shape == (2, 8)
    (fallback,) = runtime.fallbacks
    assert fallback.chosen == "cpu-matmul"
    assert fallback.skipped[0][0] == "mkl-matmul" and "divisible by 8" in fallback.skipped[0][2]


def test_no_fallback_mode_turns_that_fallback_into_an_error() -> None:
    runtime = Runtime.create(environ={"MISTRALRS_NO_FALLBACK": "1"})
    w8 = torch.randint(-127, 128, (8, 33), dtype=torch.int8)
    with pytest.raises(mistralrs_torch.FallbackError, match="mkl-matmul"):
        runtime.int8_linear(torch.randn(2, 33, dtype=torch.bfloat16), w8, torch.rand(8, dtype=torch.bfloat16))


def _threads_after_binding(env: dict[str, str], before: bool = False) -> str:
    # The runtime's environ is what counts: the process's own MKL_NUM_THREADS=3 must be ignored.
    code = (f"import torch; from mistralrs_torch.runtime import Runtime; start = torch.get_num_threads(); "
            f"Runtime.create(environ={env!r}); print({'start, ' if before else ''}torch.get_num_threads())")
    clean = {k: v for k, v in os.environ.items() if k not in ("MKL_NUM_THREADS", "OMP_NUM_THREADS")}
    result = subprocess.run([sys.executable, "-c", code], env={**clean, "MKL_NUM_THREADS": "3"}, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_thread_settings_are_honoured() -> None:
    assert _threads_after_binding({"MKL_NUM_THREADS": "1"}) == "1"
    assert _threads_after_binding({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "2"}) == "2"
    # Without a variable in the runtime's environment, the count torch started with (from the process's
    # MKL_NUM_THREADS=3, capped by torch to the cores there are) stands.
    before, after = _threads_after_binding({}, before=True).split()
    assert after == before


def test_a_thread_count_the_program_set_is_kept() -> None:
    # The process environment is the runtime's here: its MKL_NUM_THREADS=3 was torch's start-up count, which the
    # program then overrode; binding must not put 3 (or one per core) back.
    code = ("import torch; torch.set_num_threads(1); from mistralrs_torch.runtime import Runtime; "
            "runtime = Runtime.create(); (mkl,) = [b for b in runtime.matmul_backends if b.feature == 'mkl']; "
            "print(torch.get_num_threads(), mkl.threads)")
    for env in ({"MKL_NUM_THREADS": "3"}, {}):
        clean = {k: v for k, v in os.environ.items() if k not in ("MKL_NUM_THREADS", "OMP_NUM_THREADS")}
        result = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                                timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["1", "1"], (env, result.stdout)


def test_the_backend_reads_cpu_flags_from_the_resolved_snapshot_not_a_new_probe() -> None:
    threads = torch.get_num_threads()
    try:
        for profile, native in (("epyc-cpu", True), ("xeon-cpu", False)):
            runtime = Runtime.create(features="mkl", system=mistralrs_torch.load_system(profile),
                                     environ={"MKL_NUM_THREADS": "1"}, dry_run=True)
            (mkl,) = [b for b in runtime.matmul_backends if b.feature == "mkl"]
            assert mkl.native_bf16 is native and (mkl.threads, mkl.threads_from) == (1, "MKL_NUM_THREADS")
    finally:
        torch.set_num_threads(threads)


def test_bad_thread_count_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(mistralrs_torch.ConfigError, match="MKL_NUM_THREADS='many'"):
        MKLMatmul({"MKL_NUM_THREADS": "many"})
    with pytest.raises(mistralrs_torch.ConfigError, match=r"OMP_NUM_THREADS=0 is outside 1.."):
        MKLMatmul({"OMP_NUM_THREADS": "0"})
