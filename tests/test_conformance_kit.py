"""The conformance kit catches a lying or wrong backend and says which backend, case and difference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_BACKENDS = {
    "liar": '''
class Backend:
    name, feature, priority = "liar-matmul", "liar", 50
    paged_attention = None
    def supports(self, call):
        return Support(call.device == "cpu" and call.dtype in ("float32", "bfloat16"), "cpu fp32/bf16 only")
    def linear(self, x, weight, bias=None):
        return F.linear(x, weight, bias)
    def int8_linear(self, x, weight, scale, bias=None):
        return F.linear(x, weight.to(x.dtype), bias)   # forgets the scale
''',
    "mute": '''
class Backend:
    name, feature, priority = "mute-matmul", "mute", 50
    def supports(self, call):
        return Support(False, "")   # refuses without saying why
    def linear(self, x, weight, bias=None):
        return F.linear(x, weight, bias)
    def int8_linear(self, x, weight, scale, bias=None):
        raise AssertionError("never claimed")
''',
    "honest": '''
class Backend:
    name, feature, priority = "honest-matmul", "honest", 50
    def supports(self, call):
        if call.device != "cpu" or call.dtype != "float32":
            return Support(False, f"float32 on cpu only, not {call.dtype} on {call.device}")
        return Support(True)
    def linear(self, x, weight, bias=None):
        return F.linear(x, weight, bias)
    def int8_linear(self, x, weight, scale, bias=None):
        return F.linear(x, weight.to(x.dtype) * scale[:, None], bias)
''',
}


def _install(root: Path, name: str) -> None:
    """A real installed distribution on a PYTHONPATH folder: dist-info with an entry point, and its module."""
    info = root / f"kit_{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: kit-{name}\nVersion: 1.0\n\n")
    (info / "entry_points.txt").write_text(f"[mistralrs.plugins]\n{name} = kit_{name}\n")
    (root / f"kit_{name}.py").write_text(f'''
from mistralrs_torch import FeatureManifest, hookimpl

FEATURE = FeatureManifest(name="{name}", summary="a test matmul", distribution="kit-{name}", provides=("matmul",))

@hookimpl
def mistralrs_features():
    return (FEATURE,)

@hookimpl
def mistralrs_matmul_backends(active):
    if "{name}" not in active:
        return ()
    import torch.nn.functional as F
    from mistralrs_torch import Support
    {_BACKENDS[name].strip().replace(chr(10), chr(10) + "    ")}
    return (Backend(),)
''')


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site")
    for name in _BACKENDS:
        _install(root, name)
    return root


def _kit(site: Path, name: str) -> tuple[int, list[dict[str, str]]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISTRALRS_")}
    env["PYTHONPATH"] = str(site)
    result = subprocess.run([sys.executable, "-m", "mistralrs_torch", "plugins", "test", name, "--json"], env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)["results"]


def test_a_backend_that_computes_wrong_numbers_fails_with_backend_case_and_difference(site: Path) -> None:
    code, results = _kit(site, "liar")
    assert code == 1
    failed = [r for r in results if r["status"] == "failed"]
    assert failed and all("liar-matmul" in r["check"] and "int8_linear" in r["check"] for r in failed)
    assert any("int8 linear 1x32 -> 24" in r["check"] and "max relative error" in r["detail"] for r in failed)
    assert any(r["status"] == "passed" and "liar-matmul (liar) linear" in r["check"] for r in results)


def test_a_refusal_without_a_reason_fails(site: Path) -> None:
    code, results = _kit(site, "mute")
    assert code == 1
    assert any(r["status"] == "failed" and "refused without a reason" in r["detail"] for r in results)


def test_an_honest_narrow_backend_passes(site: Path) -> None:
    code, results = _kit(site, "honest")
    assert code == 0, results
    statuses = {r["check"]: r["status"] for r in results}
    assert statuses["manifests_are_complete"] == "passed"
    assert statuses["matmul backend honest-matmul (honest) int8_linear"] == "passed"
