"""The mistralrs-torch-nccl plugin through the conformance kit (mistralrs_torch.testing).

Also the rules of its own manifests.

The seed table's rows for every feature are checked together in tests/test_seed_table.py.
"""

from __future__ import annotations

from mistralrs_torch_nccl import NCCL


def test_conformance_kit(mistralrs_kit) -> None:
    # The plugin contract, then every backend of its features that can run here against the float64 reference.
    mistralrs_kit("nccl")


def test_nccl_is_switched_off_by_mistralrs_no_nccl() -> None:
    assert NCCL.disabled_by == ("MISTRALRS_NO_NCCL",)


def test_nccl_reads_the_seed_environment_variables() -> None:
    assert {"MISTRALRS_MN_LOCAL_WORLD_SIZE", "MISTRALRS_NO_NCCL"} <= set(NCCL.env_var_names())


def test_auto_mode_turns_nccl_on_only_with_two_or_more_gpus() -> None:
    assert NCCL.auto.min_gpus == 2
    assert "nccl" in {lib.name for lib in NCCL.libraries}
    assert NCCL.provides == ("collectives",)
