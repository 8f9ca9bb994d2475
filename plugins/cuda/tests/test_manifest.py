"""The mistralrs-torch-cuda plugin through the conformance kit (mistralrs_torch.testing).

Also the rules of its own manifests.

The seed table's rows for every feature are checked together in tests/test_seed_table.py.
"""

from __future__ import annotations

import importlib.metadata

from mistralrs_torch_cuda import CUDA, CUDNN


def test_conformance_kit(mistralrs_kit) -> None:
    # The plugin contract, then every backend of its features that can run here against the float64 reference.
    mistralrs_kit("cuda")


def test_the_seed_package_table_holds() -> None:
    # pip install mistralrs-torch-cuda brings in mistralrs-torch-flash-attn (the seed's Python package table).
    requirements = [r.split(";")[0].replace(" ", "") for r in importlib.metadata.requires("mistralrs-torch-cuda") or []]
    for dependency in ["mistralrs-torch-flash-attn"]:
        assert any(r.startswith(dependency + "==") for r in requirements), requirements


def test_cuda_needs_an_nvidia_gpu_and_a_cuda_build_of_torch() -> None:
    assert CUDA.gpu.min_count == 1
    assert "cuda" in {lib.name for lib in CUDA.libraries}
    assert "device" in CUDA.provides
    assert CUDA.paged_attention == "default"


def test_cudnn_needs_the_cudnn_library() -> None:
    assert "cudnn" in {lib.name for lib in CUDNN.libraries}
    assert any("cuDNN" in lib.missing for lib in CUDNN.libraries)
