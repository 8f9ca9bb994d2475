"""The mistralrs-accelerate plugin contract (mistralrs.testing) and the rules of its own manifests.

The seed table's rows for every feature are checked together in tests/test_seed_table.py.
"""

from __future__ import annotations

import pytest

from mistralrs.testing import CONTRACT_CHECKS, PluginUnderTest
from mistralrs_accelerate import ACCELERATE

PLUGIN = PluginUnderTest(entry_point="accelerate", distribution="mistralrs-accelerate", manifests=(ACCELERATE,))


@pytest.mark.parametrize("check", CONTRACT_CHECKS, ids=lambda check: check.__name__)
def test_plugin_contract(check) -> None:
    check(PLUGIN)


def test_accelerate_needs_the_framework() -> None:
    assert "accelerate" in {lib.name for lib in ACCELERATE.libraries}
    assert ACCELERATE.provides == ("matmul",)
