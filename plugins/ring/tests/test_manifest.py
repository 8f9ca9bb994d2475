"""The mistralrs-ring plugin contract (mistralrs.testing) and the rules of its own manifests.

The seed table's rows for every feature are checked together in tests/test_seed_table.py.
"""

from __future__ import annotations

import pytest

from mistralrs.testing import CONTRACT_CHECKS, PluginUnderTest
from mistralrs_ring import RING

PLUGIN = PluginUnderTest(entry_point="ring", distribution="mistralrs-ring", manifests=(RING,))


@pytest.mark.parametrize("check", CONTRACT_CHECKS, ids=lambda check: check.__name__)
def test_plugin_contract(check) -> None:
    check(PLUGIN)


def test_ring_is_auto_enabled_only_by_ring_config() -> None:
    assert RING.auto.env_set == ("RING_CONFIG",)
    assert "RING_CONFIG" in RING.env_var_names()


def test_ring_needs_no_gpu_and_provides_collectives() -> None:
    assert RING.gpu is None
    assert RING.provides == ("collectives",)
