"""The mistralrs-torch-metal plugin through the conformance kit (mistralrs_torch.testing).

Also the rules of its own manifests.

The seed table's rows for every feature are checked together in tests/test_seed_table.py.
"""

from __future__ import annotations

import importlib.metadata

from mistralrs_torch_metal import METAL


def test_conformance_kit(mistralrs_kit) -> None:
    # The plugin contract, then every backend of its features that can run here against the float64 reference.
    mistralrs_kit("metal")


def test_the_seed_package_table_holds() -> None:
    # pip install mistralrs-torch-metal brings in mistralrs-torch-accelerate (the seed's Python package table).
    requirements = [
        r.split(";")[0].replace(" ", "") for r in importlib.metadata.requires("mistralrs-torch-metal") or []
    ]
    for dependency in ["mistralrs-torch-accelerate"]:
        assert any(r.startswith(dependency + "==") for r in requirements), requirements


def test_metal_needs_an_apple_gpu_through_mps() -> None:
    assert "mps" in {lib.name for lib in METAL.libraries}
    assert "device" in METAL.provides


def test_paged_attention_is_opt_in_on_metal() -> None:
    assert METAL.paged_attention == "opt-in"
