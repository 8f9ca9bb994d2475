"""The checked-in support matrix, features reference and plugin API reference equal what the code generates."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mistralrs_torch import (
    AutoCondition,
    CallSpec,
    EnvVar,
    FeatureManifest,
    GPURequirement,
    LibraryRequirement,
    ModuleRequirement,
    PluginManager,
)
from mistralrs_torch.cli import cli
from mistralrs_torch.ops._contract import CALLSPEC_FIELDS
from mistralrs_torch.reference import features_reference_markdown, plugin_api_markdown, support_matrix_markdown

DOCS = Path(__file__).resolve().parents[1] / "docs"
REGENERATE = "regenerate with: uv run mistralrs plugins matrix --markdown > docs/support-matrix.md; " \
             "uv run mistralrs plugins reference > docs/features.md; " \
             "uv run mistralrs plugins api-reference > docs/plugin-api.md"


@pytest.fixture(scope="module")
def installed():
    return PluginManager(environ={}).features


def test_support_matrix_has_not_drifted(installed) -> None:
    assert (DOCS / "support-matrix.md").read_text() == support_matrix_markdown(installed), REGENERATE


def test_features_reference_has_not_drifted(installed) -> None:
    assert (DOCS / "features.md").read_text() == features_reference_markdown(installed), REGENERATE


def test_plugin_api_reference_has_not_drifted() -> None:
    assert (DOCS / "plugin-api.md").read_text() == plugin_api_markdown(), REGENERATE


def test_the_cli_prints_the_plugin_api_reference() -> None:
    # In-process: a subprocess would import torch once more only to print the same text.
    result = CliRunner().invoke(cli, ["plugins", "api-reference"])
    assert result.exit_code == 0, result.output
    assert result.output == (DOCS / "plugin-api.md").read_text()


@pytest.mark.parametrize("kind", [FeatureManifest, GPURequirement, LibraryRequirement, ModuleRequirement, EnvVar,
                                  AutoCondition])
def test_every_manifest_field_says_what_it_means(kind: type) -> None:
    undocumented = [f.name for f in dataclasses.fields(kind) if not f.metadata.get("doc")]
    assert not undocumented, f"{kind.__name__} fields without metadata doc: {undocumented}"
    text = (DOCS / "plugin-api.md").read_text()
    assert all(f"| `{f.name}` |" in text for f in dataclasses.fields(kind))


def test_every_callspec_field_says_what_it_means() -> None:
    assert list(CALLSPEC_FIELDS) == list(CallSpec._fields)
    assert all(CALLSPEC_FIELDS.values())


def test_matrix_has_one_row_per_installed_feature(installed) -> None:
    rows = [line for line in support_matrix_markdown(installed).splitlines()[2:] if line.startswith("| `")]
    assert sorted(re.match(r"\| `([^`]+)`", row).group(1) for row in rows) == sorted(f.manifest.name for f in installed)


@pytest.mark.parametrize(("args", "quoted"), [
    (["--system", "h100", "--features", "flash-attn flash-attn-v3"],
     "flash-attn and flash-attn-v3 are mutually exclusive: enable one (on Hopper, flash-attn-v3)"),
    (["--system", "v100", "--features", "flash-attn"],
     "flash-attn needs compute capability >= 8.0; GPU 0 (Tesla V100-SXM2-16GB) has 7.0"),
    (["--system", "xeon-cpu", "--features", "metal"], "metal is macOS-only: remove the metal feature"),
])
def test_quoted_messages_are_what_the_cli_prints(args: list[str], quoted: str) -> None:
    assert quoted in (DOCS / "features.md").read_text()
    result = subprocess.run([sys.executable, "-m", "mistralrs_torch", "plugins", "resolve", *args], capture_output=True,
                            text=True, timeout=60, check=False, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert quoted in result.stderr
