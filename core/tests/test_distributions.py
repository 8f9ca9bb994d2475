"""The one version lookup (``installed_version``): wheels' dist-info, setup.py's egg-info and .egg folders."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mistralrs_torch import _distributions
from mistralrs_torch.system import installed_version


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path, seen by a fresh scan of installed distributions."""
    (tmp_path / "foo_pkg-1.2.dist-info").mkdir()
    (tmp_path / "flash_attn_3-3.0.0b1-py3.11.egg-info").mkdir()
    egg = tmp_path / "qux-0.5-py3.11-linux-x86_64.egg"
    (egg / "EGG-INFO").mkdir(parents=True)
    monkeypatch.setattr(sys, "path", [str(tmp_path), str(egg), *sys.path])
    _distributions._installed.cache_clear()
    yield tmp_path
    _distributions._installed.cache_clear()


def test_every_kind_of_installed_metadata_gives_its_version(site: Path) -> None:
    assert installed_version("foo-pkg") == installed_version("Foo.Pkg") == "1.2"
    assert installed_version("flash-attn-3") == "3.0.0b1"  # built by setup.py, as FlashAttention-3 is
    assert installed_version("qux") == "0.5"


def test_the_first_installed_of_several_names_wins(site: Path) -> None:
    assert installed_version("not-installed", "foo_pkg", "qux") == "1.2"
    assert installed_version("not-installed") is None and installed_version() is None
