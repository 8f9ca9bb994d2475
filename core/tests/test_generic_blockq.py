"""cpu-blockq (the C block-quantized kernel) against an independent float64 reference, and its build at first use.

The reference dequantizes the codes with numpy in float64, written here from the
QuantizedWeight formulas, and multiplies in float64; the backend must agree
within its dtype's tolerance on both of its paths (per-row block dot
products below DEQUANTIZE_ROWS rows, a dequantized matrix product above).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mistralrs_torch.generic import CpuBlockQuantMatmul, _native
from mistralrs_torch.generic._blockq import DEQUANTIZE_ROWS, _bind
from mistralrs_torch.generic._native import NativeBuildError, load_kernel
from mistralrs_torch.ops import CallSpec, PreparedWeight, QuantizedWeight

#: max |got - ref| / max |ref| and ||got - ref|| / ||ref|| per dtype: the verification engine's tolerances.
TOL = {torch.float32: (1e-4, 1e-5), torch.bfloat16: (3e-2, 5e-3), torch.float16: (4e-3, 1e-3)}


def _reference(x: torch.Tensor, weight: QuantizedWeight, bias: torch.Tensor | None) -> np.ndarray:
    codes = weight.codes.numpy().astype(np.float64)
    out, in_features = codes.shape
    scales = np.repeat(weight.scales.numpy().astype(np.float64), weight.group_size, axis=1)
    if weight.offsets is None:
        dense = scales * (codes - 2 ** (weight.bits - 1))
    else:
        dense = scales * codes + np.repeat(weight.offsets.numpy().astype(np.float64), weight.group_size, axis=1)
    ref = x.double().numpy().reshape(-1, in_features) @ dense.T
    if bias is not None:
        ref = ref + bias.double().numpy()
    return ref.reshape(*x.shape[:-1], out)


def _call(backend: CpuBlockQuantMatmul, weight: QuantizedWeight, dtype: torch.dtype) -> tuple[CallSpec, object]:
    out, in_features = weight.shape
    call = CallSpec("quantized_linear", str(dtype).removeprefix("torch."), "cpu", in_features=in_features,
                    bits=weight.bits, group_size=weight.group_size, symmetric=weight.symmetric,
                    out_features=out)
    return call, backend.supports(call)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("bits", "group_size", "symmetric"), [(4, 32, False), (4, 64, True), (8, 32, True),
                                                                (8, 128, False)])
@pytest.mark.parametrize("rows", [1, 3, 5, DEQUANTIZE_ROWS + 3])
def test_matches_the_float64_reference(dtype: torch.dtype, bits: int, group_size: int, symmetric: bool,
                                       rows: int) -> None:
    gen = torch.Generator().manual_seed(rows * 100 + bits + group_size)
    out, in_features = 40, 256
    weight = QuantizedWeight(torch.randint(0, 2 ** bits, (out, in_features), generator=gen, dtype=torch.uint8),
                             torch.rand(out, in_features // group_size, generator=gen) * 0.02 + 0.001,
                             None if symmetric else -torch.rand(out, in_features // group_size, generator=gen) * 0.1,
                             bits, group_size)
    backend = CpuBlockQuantMatmul()
    call, support = _call(backend, weight, dtype)
    assert support.ok, support.reason
    prepared = PreparedWeight(backend.name, backend.prepare_quantized(weight, call, "cpu"), call, weight.shape)
    x = (torch.randn(2, rows, in_features, generator=gen) * torch.linspace(0.1, 3, in_features)).to(dtype)
    bias = torch.randn(out, generator=gen).to(dtype)
    for b in (None, bias):
        got = backend.quantized_linear(x, prepared, b)
        assert got.dtype == dtype and got.shape == (2, rows, out)
        ref = _reference(x, weight, b)
        diff = got.double().numpy() - ref
        max_error, rms_error = np.abs(diff).max() / np.abs(ref).max(), np.linalg.norm(diff) / np.linalg.norm(ref)
        assert max_error < TOL[dtype][0] and rms_error < TOL[dtype][1], (max_error, rms_error)


def test_a_zero_block_and_a_negative_extreme_are_exact_by_hand() -> None:
    # Row 0: every code 8 of a symmetric 4-bit weight (value 0); row 1: code 0 everywhere (value -8 * scale).
    codes = torch.tensor([[8] * 32, [0] * 32], dtype=torch.uint8)
    weight = QuantizedWeight(codes, torch.tensor([[0.5], [0.25]]), None, 4, 32)
    backend = CpuBlockQuantMatmul()
    call, support = _call(backend, weight, torch.bfloat16)
    assert support.ok, support.reason
    prepared = PreparedWeight(backend.name, backend.prepare_quantized(weight, call, "cpu"), call, weight.shape)
    x = torch.zeros(1, 32, dtype=torch.bfloat16)
    x[0, 3] = 1.0
    assert backend.quantized_linear(x, prepared).tolist() == [[0.0, -2.0]]


@pytest.mark.parametrize(("dtype", "bits", "group_size", "in_features", "reason"), [
    (torch.float64, 4, 32, 64, "dtype float64 is not one of float32, bfloat16, float16"),
    (torch.bfloat16, 3, 32, 64, "4- or 8-bit weights, not 3-bit"),
    (torch.bfloat16, 4, 16, 64, "group size 16 and in features 64 must be multiples of 32"),
])
def test_what_it_cannot_run_is_refused_with_the_reason(dtype: torch.dtype, bits: int, group_size: int,
                                                       in_features: int, reason: str) -> None:
    call = CallSpec("quantized_linear", str(dtype).removeprefix("torch."), "cpu", in_features=in_features,
                    bits=bits, group_size=group_size, out_features=8)
    support = CpuBlockQuantMatmul().supports(call)
    assert not support.ok and reason in support.reason


def test_without_a_compiler_the_backend_refuses_and_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    support = CpuBlockQuantMatmul().supports(CallSpec("quantized_linear", "bfloat16", "cpu", in_features=64, bits=4,
                                                      group_size=32, out_features=8))
    assert not support.ok
    assert "CC='/nonexistent/cc' is not an executable on PATH" in support.reason
    assert "apt install gcc" in support.reason


def test_a_compiler_that_fails_is_a_build_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(NativeBuildError, match=r"could not build _blockq\.c"):
        load_kernel("_blockq.c", {"CC": "false", "MISTRALRS_KERNEL_CACHE": str(tmp_path)})
    assert list(tmp_path.iterdir()) == []  # no half-written library left behind


def test_the_kernel_is_built_once_into_the_cache_and_loaded_from_it(tmp_path: Path) -> None:
    environ = {"MISTRALRS_KERNEL_CACHE": str(tmp_path / "kernels")}
    library = load_kernel("_blockq.c", environ)
    (built,) = (tmp_path / "kernels").iterdir()
    assert built.name.startswith("blockq-") and built.suffix == ".so"
    stamp = built.stat().st_mtime_ns
    assert load_kernel("_blockq.c", environ) is library
    _native._load.cache_clear()  # as a new process: the library on disk is loaded, not rebuilt
    assert load_kernel("_blockq.c", environ) is not library
    assert [p.name for p in (tmp_path / "kernels").iterdir()] == [built.name] and built.stat().st_mtime_ns == stamp


def test_a_build_without_avx2_is_refused_for_speed_and_still_computes_the_contract(plain_c_compiler: Path) -> None:
    # A compiler that drops -march=native builds the plain C path, as on a CPU without AVX2.
    gen = torch.Generator().manual_seed(7)
    weight = QuantizedWeight(torch.randint(0, 16, (24, 64), generator=gen, dtype=torch.uint8),
                             torch.rand(24, 2, generator=gen) * 0.02, -torch.rand(24, 2, generator=gen) * 0.1, 4, 32)
    backend = CpuBlockQuantMatmul()
    call, support = _call(backend, weight, torch.float32)
    assert not support.ok and "this CPU has no AVX2 and FMA" in support.reason
    backend._native._library = _bind(load_kernel("_blockq.c"))  # the refused plain build, run directly
    prepared = PreparedWeight(backend.name, backend.prepare_quantized(weight, call, "cpu"), call, weight.shape)
    for rows in (1, DEQUANTIZE_ROWS + 1):
        x = torch.randn(rows, 64, generator=gen)
        ref = _reference(x, weight, None)
        diff = backend.quantized_linear(x, prepared).double().numpy() - ref
        assert np.abs(diff).max() / np.abs(ref).max() < TOL[torch.float32][0]
