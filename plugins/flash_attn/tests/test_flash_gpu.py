"""FlashAttention on a real NVIDIA GPU: every flash backend this machine has, against the float64 CPU reference.

Marked gpu: skipped where torch sees no NVIDIA GPU. torch's built-in kernel is
always tested; the flash-attn package and FlashAttention-3 only where they are
installed (the GPU-check machines have neither), each skip saying why.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mistralrs_torch.doctor import run_doctor
from mistralrs_torch.ops import CallSpec
from mistralrs_torch.runtime import Runtime
from mistralrs_torch.system import GPUFacts
from mistralrs_torch.testing import TOLERANCES
from mistralrs_torch.testing import references as ref
from mistralrs_torch_flash_attn import INSTALL_FLASH_ATTN
from mistralrs_torch_flash_attn._backends import FlashAttention2, TorchFlashAttention, torch_flash_check
from mistralrs_torch_flash_attn._select import flash_attn_backend, flash_attn_v3_backend

pytestmark = pytest.mark.gpu
DTYPES = [torch.float16, torch.bfloat16]
CASES = [(128, 128, True, 128), (64, 64, True, 64), (1, 300, False, 128), (200, 200, False, 64)]
#: Bottom-right causal with a query shorter than the keys: decode and chunked prefill.
UNALIGNED = [(1, 300, True, 128), (5, 77, True, 64)]


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check(backend, dtype: torch.dtype, q_len: int, k_len: int, causal: bool, head: int) -> None:
    call = CallSpec("attention", _name(dtype), "cuda", head, "causal" if causal else "none",
                    gqa=True, aligned=q_len == k_len)
    support = backend.supports(call)
    assert support.ok, (
        f"{backend.name} refused a call it should run on {torch.cuda.get_device_name()}: {support.reason}"
    )
    gen = torch.Generator().manual_seed(q_len + k_len)
    q, k, v = (torch.randn(2, h, n, head, generator=gen) for h, n in ((8, q_len), (2, k_len), (2, k_len)))
    out = backend.attention(*(t.to("cuda", dtype) for t in (q, k, v)), causal=causal)
    expected = ref.attention_reference(*(t.to(dtype).double().numpy() for t in (q, k, v)), causal=causal)
    got = out.detach().cpu().double().numpy()
    assert got.shape == expected.shape and np.isfinite(got).all()
    error = float(np.abs(got - expected).max() / max(1.0, float(np.abs(expected).max())))
    assert error <= TOLERANCES[_name(dtype)].max_error, (backend.name, error)


def _ampere_or_newer() -> None:
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip(
            f"FlashAttention needs compute capability 8.0+; {torch.cuda.get_device_name()} has "
            f"{torch.cuda.get_device_capability()}"
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("q_len", "k_len", "causal", "head"), CASES)
def test_torchs_flash_kernel_matches_the_reference(dtype, q_len, k_len, causal, head) -> None:
    _ampere_or_newer()
    _check(TorchFlashAttention(GPUFacts.from_torch(), torch_flash_check), dtype, q_len, k_len, causal, head)


@pytest.mark.parametrize(("q_len", "k_len", "causal", "head"), UNALIGNED)
def test_torchs_flash_kernel_refuses_bottom_right_causal_with_the_reason(q_len, k_len, causal, head) -> None:
    _ampere_or_newer()
    support = TorchFlashAttention(GPUFacts.from_torch(), torch_flash_check).supports(
        CallSpec("attention", "bfloat16", "cuda", head, "causal", gqa=True, aligned=False)
    )
    assert not support.ok and "top-left" in support.reason


def _package() -> FlashAttention2:
    _ampere_or_newer()
    backend = flash_attn_backend()
    if not isinstance(backend, FlashAttention2):
        pytest.skip(
            f"the flash-attn package is not usable here ({backend.note or 'not installed'}): {INSTALL_FLASH_ATTN}"
        )
    return backend


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("q_len", "k_len", "causal", "head"), CASES + UNALIGNED)
def test_the_flash_attn_package_matches_the_reference(dtype, q_len, k_len, causal, head) -> None:
    _check(_package(), dtype, q_len, k_len, causal, head)


def _paged_case(backend, dtype: torch.dtype, block_size: int) -> None:
    gen = torch.Generator().manual_seed(block_size)
    lens = (5, block_size + 3, 3)
    per_seq = -(-max(lens) // block_size)
    blocks = len(lens) * per_seq + 1
    k_cache, v_cache = (torch.randn(blocks, block_size, 2, 128, generator=gen) for _ in range(2))
    table = torch.randperm(blocks, generator=gen)[: len(lens) * per_seq].to(torch.int32).reshape(len(lens), per_seq)
    q, seq_lens = torch.randn(len(lens), 8, 1, 128, generator=gen), torch.tensor(lens, dtype=torch.int32)
    call = CallSpec("paged_attention", _name(dtype), "cuda", 128, "causal", block_size=block_size, gqa=True)
    assert backend.supports(call).ok, backend.supports(call).reason
    out = backend.paged_attention(
        q.to("cuda", dtype), k_cache.to("cuda", dtype), v_cache.to("cuda", dtype), table.cuda(), seq_lens.cuda()
    )
    expected = ref.paged_attention_reference(
        q.to(dtype).double().numpy(),
        k_cache.to(dtype).double().numpy(),
        v_cache.to(dtype).double().numpy(),
        table.numpy(),
        seq_lens.numpy(),
    )
    error = float(np.abs(out.cpu().double().numpy() - expected).max() / max(1.0, float(np.abs(expected).max())))
    assert error <= TOLERANCES[_name(dtype)].max_error


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_flash_attn_package_paged_decode_matches_the_reference(dtype) -> None:
    _paged_case(_package(), dtype, 256)


def _fa3():
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip(f"FlashAttention-3 runs on Hopper only; {torch.cuda.get_device_name()} is not")
    backend = flash_attn_v3_backend()
    if backend.module is None:  # the reason says whether it is missing or fails to import, with the command
        pytest.skip(backend.supports(CallSpec("attention", "bfloat16", "cuda", 128, "none", aligned=True)).reason)
    return backend


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("q_len", "k_len", "causal", "head"), CASES + UNALIGNED)
def test_flash_attention_3_matches_the_reference(dtype, q_len, k_len, causal, head) -> None:
    _check(_fa3(), dtype, q_len, k_len, causal, head)


@pytest.mark.parametrize("block_size", [16, 256])
def test_flash_attention_3_paged_matches_the_reference(block_size: int) -> None:
    _paged_case(_fa3(), torch.bfloat16, block_size)


def test_the_runtime_binds_flash_attn_and_doctor_names_the_same_implementation() -> None:
    _ampere_or_newer()
    runtime = Runtime.create(features="flash-attn", environ={})
    q, k, v = (torch.randn(1, 8, 64, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    runtime.attention(q, k, v, causal=True)
    bound = runtime.bindings[0].chosen
    assert bound in ("flash-attn-package", "flash-attn-torch")
    report = run_doctor(environ={}, features="flash-attn")
    (check,) = [c for c in report.sections["configuration"] if c.subject == "flash-attn implementation"]
    # "ok" names the package; "info" names torch's built-in kernel and carries the install command.
    assert ("package" in bound) == (check.status == "ok"), (bound, check)
    assert report.exit_code == 0, (report.errors, report.failed)


def test_the_conformance_kit_passes_on_this_gpu() -> None:
    from mistralrs_torch.testing import run_kit

    results = run_kit("flash_attn")
    assert not [r for r in results if r.status == "failed"], [r for r in results if r.status == "failed"]
