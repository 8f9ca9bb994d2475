"""The mistralrs-torch-flash-attn plugin through the conformance kit (mistralrs_torch.testing).

Also the rules of its own manifests.

The seed table's rows for every feature are checked together in tests/test_seed_table.py.
"""

from __future__ import annotations

from mistralrs_torch_flash_attn import FLASH_ATTN, FLASH_ATTN_V3, INSTALL_FLASH_ATTN_3


def test_conformance_kit(mistralrs_kit) -> None:
    # The plugin contract, then every backend of its features that can run here against the float64 reference.
    mistralrs_kit("flash_attn")


def test_flash_attn_needs_ampere_or_newer() -> None:
    assert FLASH_ATTN.gpu.min_compute_capability == (8, 0)
    assert FLASH_ATTN.gpu.below_compute_capability is None


def test_flash_attn_v3_is_hopper_only_and_points_blackwell_to_flash_attn() -> None:
    gpu = FLASH_ATTN_V3.gpu
    assert (gpu.min_compute_capability, gpu.below_compute_capability) == ((9, 0), (10, 0))
    assert "flash-attn" in gpu.newer_gpu_fix


def test_flash_attn_v3_wins_on_hopper() -> None:
    assert FLASH_ATTN_V3.selection_priority > FLASH_ATTN.selection_priority
    assert FLASH_ATTN_V3.preferred_on == "Hopper"


def test_flash_attention_3_is_found_by_module_and_never_a_dependency() -> None:
    import importlib.metadata

    (module,) = FLASH_ATTN_V3.modules
    assert (module.module, module.distribution) == ("flash_attn_interface", "flash_attn_3")
    assert module.install == INSTALL_FLASH_ATTN_3
    requirements = importlib.metadata.requires("mistralrs-torch-flash-attn") or []
    assert not any(r.lower().replace("_", "-").startswith(("flash-attn", "flash-attn-3")) for r in requirements)


def test_the_probe_hook_reports_flash_attn_only_when_installed() -> None:
    import importlib.util

    from mistralrs_torch import load_system
    from mistralrs_torch_flash_attn import plugin

    facts = plugin.mistralrs_probe_system(load_system("xeon-cpu"))
    assert isinstance(facts, dict)
    assert ("flash_attn" in facts) == (importlib.util.find_spec("flash_attn") is not None)
