"""The mistralrs-torch-mkl plugin through the conformance kit (mistralrs_torch.testing).

Also the rules of its own manifests.

The seed table's rows for every feature are checked together in tests/test_seed_table.py.
"""

from __future__ import annotations

from mistralrs_torch_mkl import MKL


def test_conformance_kit(mistralrs_kit) -> None:
    # The plugin contract, then every backend of its features that can run here against the float64 reference.
    mistralrs_kit("mkl")


def test_mkl_needs_x86_64_and_the_mkl_library() -> None:
    assert MKL.cpu_archs == ("x86_64",)
    (library,) = MKL.libraries
    assert library.name == "mkl"
    assert library.missing == "MKL not found"
    assert "oneAPI" in library.fix


def test_mkl_carries_the_seed_amd_note() -> None:
    assert "Intel-optimized" in MKL.cpu_vendor_notes["amd"]
    assert "intel" not in MKL.cpu_vendor_notes
