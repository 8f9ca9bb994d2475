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
    name, feature, dispatch_priority = "liar-matmul", "liar", 50
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
    name, feature, dispatch_priority = "mute-matmul", "mute", 50
    def supports(self, call):
        return Support(False, "")   # refuses without saying why
    def linear(self, x, weight, bias=None):
        return F.linear(x, weight, bias)
    def int8_linear(self, x, weight, scale, bias=None):
        raise AssertionError("never claimed")
''',
    "honest": '''
class Backend:
    name, feature, dispatch_priority = "honest-matmul", "honest", 50
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


#: Manifest keyword arguments per test plugin (default: provides matmul only).
_MANIFESTS = {
    # Competes with the in-repo mkl: excludes it (one-sided: a third party cannot edit mkl's manifest) and loses
    # auto mode's tie to it (mkl's selection priority is 50), so only a forced selection runs its kernels.
    "rival": 'excludes=("mkl",), selection_priority=10',
    "needy": 'requires=("warp-drive",)',
}
_BACKENDS["rival"] = _BACKENDS["honest"].replace("honest", "rival")
_BACKENDS["needy"] = _BACKENDS["honest"].replace("honest", "needy")


def _install(root: Path, name: str) -> None:
    """A real installed distribution on a PYTHONPATH folder: dist-info with an entry point, and its module."""
    info = root / f"kit_{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: kit-{name}\nVersion: 1.0\n\n")
    (info / "entry_points.txt").write_text(f"[mistralrs.plugins]\n{name} = kit_{name}\n")
    (root / f"kit_{name}.py").write_text(f'''
from mistralrs_torch import FeatureManifest, hookimpl

FEATURE = FeatureManifest(name="{name}", summary="a test matmul", distribution="kit-{name}", provides=("matmul",),
                          {_MANIFESTS.get(name, "")})

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


def _run(site: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISTRALRS_") and k != "PYTHONPATH"}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    result = subprocess.run([sys.executable, "-m", "mistralrs_torch", "plugins", "test", *args], env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _kit(site: Path, name: str) -> tuple[int, list[dict[str, str]]]:
    result = _run(site, name, "--json")
    return result.returncode, json.loads(result.stdout)["results"]


def test_a_backend_that_computes_wrong_numbers_fails_with_backend_case_and_difference(site: Path) -> None:
    code, results = _kit(site, "liar")
    assert code == 1
    failed = [r for r in results if r["status"] == "failed"]
    assert failed and all("liar-matmul" in r["check"] and "int8_linear" in r["check"] for r in failed)
    assert any("[int8 linear 1x32 -> 24, float32, cpu]" in r["detail"] and "max error" in r["detail"] for r in failed)
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


def test_the_report_ends_with_a_verdict_and_its_exit_status(site: Path) -> None:
    honest, liar = _run(site, "honest"), _run(site, "liar")
    assert (honest.returncode, honest.stdout.splitlines()[-1]) == (0, "verdict: passed")
    assert (liar.returncode, liar.stdout.splitlines()[-1]) == (1, "verdict: failed")
    assert json.loads(_run(site, "honest", "--json").stdout)["verdict"] == "passed"


def test_verbose_prints_every_case(site: Path) -> None:
    lines = _run(site, "honest", "-v").stdout.splitlines()
    assert any(line.startswith("    verified float32  cpu    linear 5x48 -> 40 +bias: max ") for line in lines), lines
    assert any(line.startswith("    refused  bfloat16") and "float32 on cpu only" in line for line in lines)


def test_a_plugin_whose_hardware_is_absent_is_skipped_not_passed() -> None:
    result = _run(None, "cuda")
    assert result.returncode == 5, result.stdout
    assert result.stdout.splitlines()[-1] == "verdict: skipped"
    assert "SKIPPED  feature cuda: cannot run here: cuda needs an NVIDIA GPU" in result.stdout
    assert not any(line.startswith("PASSED   attention backend") for line in result.stdout.splitlines())
    assert json.loads(_run(None, "cuda", "--json").stdout)["verdict"] == "skipped"


def test_a_rival_that_excludes_mkl_and_loses_the_auto_tie_is_forced_active_and_passes(site: Path) -> None:
    listed = subprocess.run([sys.executable, "-m", "mistralrs_torch", "plugins", "list"],
                            env={**{k: v for k, v in os.environ.items() if not k.startswith("MISTRALRS_")},
                                 "PYTHONPATH": str(site)}, capture_output=True, text=True, timeout=120, check=False)
    rival_row = next(line for line in listed.stdout.splitlines() if line.startswith("rival "))
    assert " available " in rival_row and "mkl" in rival_row  # auto mode keeps mkl
    result = _run(site, "rival", "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["verdict"] == "passed", report
    statuses = {r["check"]: r for r in report["results"]}
    assert statuses["exclusions_are_enforced"]["status"] == "passed"
    ran = statuses["matmul backend rival-matmul (rival) linear"]
    assert ran["status"] == "passed" and ran["ran"] and any(c["status"] == "verified" for c in ran["cases"])


def test_a_feature_requiring_a_feature_nobody_provides_fails(site: Path) -> None:
    result = _run(site, "needy")
    assert result.returncode == 1
    line = next(line for line in result.stdout.splitlines() if "requirements_name_installed_features" in line)
    assert line.startswith("FAILED") and "warp-drive, which no installed plugin provides" in line


def test_features_narrows_the_run_and_an_unknown_one_is_refused() -> None:
    only = _run(None, "builtin", "--features", "cpu", "--json")
    assert json.loads(only.stdout)["verdict"] == "passed"
    wrong = _run(None, "mkl", "--features", "cuda")
    assert wrong.returncode == 1
    assert "plugin 'mkl' has no feature 'cuda': pass --features with some of mkl" in wrong.stdout
