"""The pytest side of the conformance kit: a ``mistralrs_kit`` fixture for plugin test suites.

Registered through the ``pytest11`` entry point of the ``mistralrs-torch`` distribution::

    def test_conformance(mistralrs_kit):
        mistralrs_kit("my_plugin")   # fails with the kit's report; skips when only static checks could run here
"""

from __future__ import annotations

from collections.abc import Callable

import pytest


def _check(entry_point: str, features: tuple[str, ...] = ()) -> None:
    from mistralrs_torch.testing import run_kit

    report = run_kit(entry_point, features or None)
    if report.verdict == "failed":
        pytest.fail(f"{entry_point} fails the mistralrs conformance kit:\n"
                    + "\n".join(f"  {r.check}: {r.detail}" for r in report.results if r.status == "failed"),
                    pytrace=False)
    if report.verdict == "skipped":
        # Only static checks ran: no backend code did, so this is not a pass.
        pytest.skip(f"{entry_point}: no backend could run here: "
                    + "; ".join(f"{r.check}: {r.detail}" for r in report.results if r.status == "skipped"))


@pytest.fixture
def mistralrs_kit() -> Callable[..., None]:
    """Run the conformance kit on one installed plugin by entry-point name: ``mistralrs_kit("name", "feature")``."""
    return lambda entry_point, *features: _check(entry_point, features)
