"""Every distribution's packaging: license, classifiers that match its manifests, a project URL, py.typed, a README
that says what it provides, what it needs and how to check it. (tests/test_pip_install.py checks the built files.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mistralrs_torch import PluginManager

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = sorted(p.parent for p in [ROOT / "core" / "pyproject.toml", *ROOT.glob("plugins/*/pyproject.toml")])
OS_CLASSIFIERS = {"linux": "Operating System :: POSIX :: Linux", "windows": "Operating System :: Microsoft :: Windows",
                  "macos": "Operating System :: MacOS"}


def _project(member: Path) -> dict:
    return tomllib.loads((member / "pyproject.toml").read_text(encoding="utf-8"))["project"]


@pytest.mark.parametrize("member", MEMBERS, ids=[m.name for m in MEMBERS])
def test_each_distribution_ships_the_license_types_and_metadata(member: Path) -> None:
    project = _project(member)
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (member / "LICENSE").read_text(encoding="utf-8") == (ROOT / "LICENSE").read_text(encoding="utf-8")
    (package,) = [p for p in (member / "src").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert (package / "py.typed").is_file()
    assert project["urls"] and project["keywords"]
    classifiers = set(project["classifiers"])
    versions = {f"Programming Language :: Python :: 3.{v}" for v in (10, 11, 12, 13)}
    assert versions <= classifiers and "Typing :: Typed" in classifiers
    assert project["requires-python"] == ">=3.10"


@pytest.mark.parametrize("member", MEMBERS, ids=[m.name for m in MEMBERS])
def test_each_readme_says_what_it_provides_needs_and_how_to_check_it(member: Path) -> None:
    text = (member / "README.md").read_text(encoding="utf-8")
    assert text.startswith(f"# {_project(member)['name']}\n")
    for heading in ("## Requirements", "## Install", "## Check it"):
        assert heading in text, heading
    assert "pip install --find-links DIST" in text


def test_operating_system_classifiers_match_the_manifests_platforms() -> None:
    platforms: dict[str, set[str]] = {}
    for installed in PluginManager(environ={}).features:
        where = installed.manifest.platforms or OS_CLASSIFIERS  # none listed: every platform
        platforms.setdefault(installed.plugin.distribution, set()).update(where)
    for member in MEMBERS:
        project = _project(member)
        wanted = {OS_CLASSIFIERS[p] for p in platforms[project["name"]]}
        found = {c for c in project["classifiers"] if c.startswith("Operating System ::")}
        everywhere = wanted == set(OS_CLASSIFIERS.values())
        assert found == ({"Operating System :: OS Independent"} if everywhere else wanted), project["name"]
