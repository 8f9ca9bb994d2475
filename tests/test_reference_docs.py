"""The checked-in support matrix and features reference equal what the installed manifests generate."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from mistralrs_torch import PluginManager
from mistralrs_torch.reference import features_reference_markdown, support_matrix_markdown

DOCS = Path(__file__).resolve().parents[1] / "docs"
REGENERATE = "regenerate with: uv run mistralrs plugins matrix --markdown > docs/support-matrix.md; " \
             "uv run mistralrs plugins reference > docs/features.md"


@pytest.fixture(scope="module")
def installed():
    return PluginManager(environ={}).features


def test_support_matrix_has_not_drifted(installed) -> None:
    assert (DOCS / "support-matrix.md").read_text() == support_matrix_markdown(installed), REGENERATE


def test_features_reference_has_not_drifted(installed) -> None:
    assert (DOCS / "features.md").read_text() == features_reference_markdown(installed), REGENERATE


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
