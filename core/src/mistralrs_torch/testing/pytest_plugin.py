"""The pytest side of the conformance kit: a ``mistralrs_kit`` fixture for plugin test suites.

Registered through the ``pytest11`` entry point of the ``mistralrs`` distribution::

    def test_conformance(mistralrs_kit):
        mistralrs_kit("my_plugin")   # fails with the kit's report, skips when nothing could run here
"""

from __future__ import annotations

from collections.abc import Callable

import pytest


def _check(entry_point: str) -> None:
    from mistralrs_torch.testing import run_kit

    results = run_kit(entry_point)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        pytest.fail(f"{entry_point} fails the mistralrs conformance kit:\n"
                    + "\n".join(f"  {r.check}: {r.detail}" for r in failed), pytrace=False)
    if not any(r.status == "passed" for r in results):
        pytest.skip(f"{entry_point}: nothing could run here: " + "; ".join(r.detail for r in results))


@pytest.fixture
def mistralrs_kit() -> Callable[[str], None]:
    """Run the conformance kit on one installed plugin by entry-point name."""
    return _check
