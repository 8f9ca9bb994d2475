"""The mistralrs-torch-accelerate plugin through the conformance kit (mistralrs_torch.testing).

Also the rules of its own manifests.

The seed table's rows for every feature are checked together in tests/test_seed_table.py.
"""

from __future__ import annotations

from mistralrs_torch_accelerate import ACCELERATE


def test_conformance_kit(mistralrs_kit) -> None:
    # The plugin contract, then every backend of its features that can run here against the float64 reference.
    mistralrs_kit("accelerate")


def test_accelerate_needs_the_framework() -> None:
    assert "accelerate" in {lib.name for lib in ACCELERATE.libraries}
    assert ACCELERATE.provides == ("matmul",)
