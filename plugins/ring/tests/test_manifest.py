"""The mistralrs-torch-ring plugin through the conformance kit (mistralrs_torch.testing).

Also the rules of its own manifests.

The seed table's rows for every feature are checked together in tests/test_seed_table.py.
"""

from __future__ import annotations

from mistralrs_torch_ring import RING


def test_conformance_kit(mistralrs_kit) -> None:
    # The plugin contract, then every backend of its features that can run here against the float64 reference.
    mistralrs_kit("ring")


def test_ring_is_auto_enabled_only_by_ring_config() -> None:
    assert RING.auto.env_set == ("RING_CONFIG",)
    assert "RING_CONFIG" in RING.env_var_names()


def test_ring_needs_no_gpu_and_provides_collectives() -> None:
    assert RING.gpu is None
    assert RING.provides == ("collectives",)
