"""`mistralrs plugins list|resolve|system` end to end, in subprocesses.

Exit status: 0 on success, 1 for an invalid selection, a malformed
configuration or a strict-mode broken plugin, 2 for usage errors; never a
Python traceback for bad input.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mistralrs_torch import PluginManager, load_system
from mistralrs_torch.resolution import STATUSES

LIST_SCHEMA = "mistralrs.plugins.list/1"
RESOLVE_SCHEMA = "mistralrs.plugins.resolve/1"


def _json(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _statuses(data: dict) -> dict[str, str]:
    return {f["feature"]: f["status"] for f in data["features"]}


def _no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


def _row(text: str, feature: str) -> str:
    rows = [line for line in text.splitlines() if line.split()[:1] == [feature]]
    assert len(rows) == 1, text
    return rows[0]


# --- This machine --------------------------------------------------------------------------------------


@pytest.fixture
def this_machine():
    system = PluginManager(environ={}).probe_system()
    if system.os != "linux" or system.gpus_of("nvidia"):
        pytest.skip("expectations written for a Linux machine without NVIDIA GPUs")
    return system


def test_plugins_list_on_this_machine(run_cli, this_machine) -> None:
    result = run_cli("plugins", "list")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for feature in ("cuda", "cudnn", "flash-attn", "flash-attn-v3", "nccl", "metal", "accelerate"):
        assert " unavailable " in _row(text, feature), feature
    assert " available " in _row(text, "ring")
    assert "RING_CONFIG" in _row(text, "ring")
    assert " active " in _row(text, "cpu")
    assert "macOS-only" in _row(text, "metal") and "macOS-only" in _row(text, "accelerate")
    assert "NVIDIA GPU" in _row(text, "cuda")
    mkl = _row(text, "mkl")
    mkl_expected = "active" if this_machine.arch == "x86_64" and "mkl" in this_machine.libraries else "unavailable"
    assert f" {mkl_expected} " in mkl
    assert ("Intel-optimized" in mkl) == (this_machine.cpu.vendor == "amd" and mkl_expected == "active")
    for header in ("FEATURE", "PLUGIN", "DISTRIBUTION", "STATUS", "PROVIDES", "REASON"):
        assert header in text
    assert "mistralrs-torch-flash-attn 0.1.0" in _row(text, "flash-attn")
    assert " flash_attn " in _row(text, "flash-attn")


def test_plugins_list_json_on_this_machine(run_cli, this_machine, all_features) -> None:
    data = _json(run_cli("plugins", "list", "--json"))
    assert data["schema"] == LIST_SCHEMA
    statuses = _statuses(data)
    assert set(statuses) == all_features
    assert all(type(s) is str and s in STATUSES for s in statuses.values())
    expected_unavailable = {"cuda", "cudnn", "flash-attn", "flash-attn-v3", "nccl", "metal", "accelerate"}
    assert {n for n, s in statuses.items() if s == "unavailable"} >= expected_unavailable
    assert statuses["ring"] == "available"
    assert statuses["cpu"] == "active"
    assert set(data["active"]) == {n for n, s in statuses.items() if s == "active"}
    for feature in data["features"]:
        assert set(feature) >= {"feature", "status", "plugin", "distribution", "version", "provides", "reasons",
                                "notes"}
        assert feature["reasons"], feature
    by_name = {f["feature"]: f for f in data["features"]}
    assert (by_name["cudnn"]["plugin"], by_name["cudnn"]["distribution"]) == ("cuda", "mistralrs-torch-cuda")
    assert by_name["nccl"]["provides"] == ["collectives"]


def test_plugins_system_json_round_trips_through_system_file(run_cli, tmp_path) -> None:
    dumped = run_cli("plugins", "system", "--json")
    assert dumped.returncode == 0, dumped.stderr
    snapshot = json.loads(dumped.stdout)
    assert snapshot["schema"] == "mistralrs.system/1"
    path = tmp_path / "here.json"
    path.write_text(dumped.stdout, encoding="utf-8")
    again = run_cli("plugins", "system", "--json", "--system", str(path))
    assert {**json.loads(again.stdout), "source": None} == {**snapshot, "source": None}
    here = _json(run_cli("plugins", "list", "--json"))
    there = _json(run_cli("plugins", "list", "--json", "--system", str(path)))
    assert there["system"] == str(path)
    assert here["features"] == there["features"]
    assert here["active"] == there["active"]


def test_plugins_system_text_describes_the_machine(run_cli) -> None:
    result = run_cli("plugins", "system")
    assert result.returncode == 0, result.stderr
    for label in ("os:", "cpu:", "memory:", "torch:", "libraries:"):
        assert label in result.stdout


def test_plugins_system_for_a_profile_prints_the_profile(run_cli) -> None:
    data = _json(run_cli("plugins", "system", "--json", "--system", "h100"))
    assert data == json.loads(load_system("h100").dumps())
    text = run_cli("plugins", "system", "--system", "v100").stdout
    assert "Tesla V100-SXM2-16GB" in text and "7.0" in text


# --- Profiles through the CLI --------------------------------------------------------------------------


def test_resolve_h100_shows_flash_attn_v3_and_why_flash_attn_was_left_out(run_cli) -> None:
    result = run_cli("plugins", "resolve", "--system", "h100")
    assert result.returncode == 0, result.stderr
    active_line = next(line for line in result.stdout.splitlines() if line.startswith("active:"))
    assert set(active_line.split()[1:]) == {"cuda", "cudnn", "flash-attn-v3", "mkl", "cpu"}
    assert "flash-attn-v3 is preferred on Hopper" in result.stdout


def test_resolve_json_has_a_versioned_schema(run_cli, all_features) -> None:
    data = _json(run_cli("plugins", "resolve", "--system", "multi-gpu-8xh100", "--json"))
    assert data["schema"] == RESOLVE_SCHEMA
    assert data["errors"] == []
    assert set(data["active"]) == {"cuda", "cudnn", "flash-attn-v3", "mkl", "nccl", "cpu"}
    assert set(_statuses(data)) == all_features
    assert all(type(f["status"]) is str and f["status"] in STATUSES for f in data["features"])
    assert data["selection"]["mode"] == "auto"


def test_list_json_for_apple_silicon(run_cli) -> None:
    data = _json(run_cli("plugins", "list", "--system", "apple-m2", "--json"))
    assert data["schema"] == LIST_SCHEMA
    assert set(data["active"]) == {"metal", "accelerate", "cpu"}
    assert data["system"] == "apple-m2"


def test_ring_config_in_the_environment_switches_to_ring(run_cli) -> None:
    data = _json(run_cli("plugins", "resolve", "--system", "multi-gpu-8xh100", "--json",
                         env={"RING_CONFIG": "/tmp/ring.json"}))
    assert _statuses(data)["ring"] == "active"
    assert _statuses(data)["nccl"] == "available"


def test_mistralrs_no_nccl_in_the_environment(run_cli) -> None:
    data = _json(run_cli("plugins", "resolve", "--system", "multi-gpu-8xh100", "--json",
                         env={"MISTRALRS_NO_NCCL": "1"}))
    assert _statuses(data)["nccl"] == "unavailable"


def test_selection_precedence_through_the_cli(run_cli, tmp_path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "mistralrs.toml").write_text('features = ["ring"]\n', encoding="utf-8")
    (project / "pyproject.toml").write_text('[tool.mistralrs]\nfeatures = ["cuda"]\n', encoding="utf-8")

    def active(*args, env=None):
        data = _json(run_cli("plugins", "resolve", "--system", "xeon-cpu", "--json", *args, env=env, cwd=project))
        return set(data["active"]), data["selection"]["source"]

    found, source = active()
    assert found == {"ring", "cpu"}
    assert "mistralrs.toml" in source
    assert active(env={"MISTRALRS_FEATURES": "mkl"}) == ({"mkl", "cpu"}, "MISTRALRS_FEATURES")
    assert active("--features", "none", env={"MISTRALRS_FEATURES": "mkl"})[0] == {"cpu"}
    assert active("--features", "auto", env={"MISTRALRS_FEATURES": "mkl"})[0] == {"mkl", "cpu"}
    assert active("--features", "mkl ring")[0] == {"mkl", "ring", "cpu"}


# --- Exit codes and errors -----------------------------------------------------------------------------


def test_an_invalid_selection_exits_1_with_every_violation_and_no_traceback(run_cli) -> None:
    result = run_cli("plugins", "resolve", "--system", "v100", "--features", "flash-attn")
    assert result.returncode == 1
    _no_traceback(result)
    assert "flash-attn needs compute capability >= 8.0; GPU 0 (Tesla V100-SXM2-16GB) has 7.0" in result.stderr


def test_an_invalid_selection_with_json_prints_the_errors(run_cli) -> None:
    result = run_cli("plugins", "resolve", "--system", "h100", "--features", "flash-attn flash-attn-v3 metal",
                     "--json")
    assert result.returncode == 1
    _no_traceback(result)
    data = json.loads(result.stdout)
    assert data["schema"] == RESOLVE_SCHEMA
    assert data["active"] == []
    messages = [e["message"] + ": " + e["fix"] for e in data["errors"]]
    assert "flash-attn and flash-attn-v3 are mutually exclusive: enable one (on Hopper, flash-attn-v3)" in messages
    assert any(m.startswith("metal is macOS-only: remove") for m in messages)
    assert all(set(e) == {"feature", "rule", "message", "fix"} for e in data["errors"])


def test_the_seed_conflicts_each_exit_1(run_cli) -> None:
    cases = [
        (("--system", "h100", "--features", "flash-attn,flash-attn-v3"), "mutually exclusive"),
        (("--system", "xeon-cpu", "--features", "metal"), "metal is macOS-only"),
        (("--system", "h100", "--features", "cudnn"), "cudnn requires cuda: add cuda"),
        (("--system", "h100", "--features", "flash-atn"), "did you mean 'flash-attn'?"),
    ]
    for args, message in cases:
        result = run_cli("plugins", "resolve", *args)
        assert result.returncode == 1, args
        assert message in result.stderr, args
        _no_traceback(result)


BAD_INPUTS = [
    # (args, env, expected exit status, text expected in the output)
    (("plugins", "resolve", "--system", "nosuch"), {}, 2, "neither a profile nor a file"),
    (("plugins", "list", "--system", "h10"), {}, 2, "did you mean 'h100'?"),
    (("plugins", "list", "--bogus"), {}, 2, "--bogus"),
    (("plugins", "nosuchcommand"), {}, 2, "nosuchcommand"),
    (("plugins", "resolve", "--features"), {}, 2, "--features"),
    (("plugins", "list"), {"MISTRALRS_FEATURES": "auto cuda"}, 1, "MISTRALRS_FEATURES"),
    (("plugins", "list"), {"MISTRALRS_STRICT_PLUGINS": "maybe"}, 1, "MISTRALRS_STRICT_PLUGINS"),
    (("plugins", "list"), {"MISTRALRS_PLUGIN_AUTOLOAD": "perhaps"}, 1, "MISTRALRS_PLUGIN_AUTOLOAD"),
    (("plugins", "resolve", "--system", "multi-gpu-8xh100"), {"MISTRALRS_NO_NCCL": "maybe"}, 1, "MISTRALRS_NO_NCCL"),
    (("plugins", "resolve", "--system", "multi-gpu-8xh100", "--features", "nccl"), {"MISTRALRS_NO_NCCL": "1"}, 1,
     "contradict each other"),
    (("plugins", "list", "--features", "quantum"), {}, 1, "quantum"),
]


@pytest.mark.parametrize(("args", "env", "status", "text"), BAD_INPUTS,
                         ids=[" ".join([*case[0][1:], *case[1]]) for case in BAD_INPUTS])
def test_bad_input_gets_its_exit_status_and_a_message_without_traceback(run_cli, args, env, status, text) -> None:
    result = run_cli(*args, env=env)
    assert result.returncode == status, result.stderr
    _no_traceback(result)
    assert text in result.stderr


@pytest.mark.parametrize(("content", "text"), [
    ('{\n  "schema": "mistralrs.system/1",\n  oops\n}', "line 3"),
    ('[1, 2, 3]', "JSON object"),
    ('{"schema": "mistralrs.system/0"}', "mistralrs.system/1"),
    ('{"schema": "mistralrs.system/1", "gpus": [{"index": 0}]}', "malformed"),
])
def test_a_bad_system_file_is_a_malformed_configuration(run_cli, tmp_path, content, text) -> None:
    path = tmp_path / "box.json"
    path.write_text(content, encoding="utf-8")
    result = run_cli("plugins", "list", "--system", str(path))
    assert result.returncode == 1  # as the README promises for malformed configuration; 2 is for usage
    _no_traceback(result)
    assert text in result.stderr


@pytest.mark.parametrize("cc", ["9.0", [7]], ids=["text", "one-int"])
def test_a_system_file_with_a_malformed_compute_capability_is_a_malformed_configuration(run_cli, tmp_path, cc) -> None:
    data = load_system("v100").to_json()
    data["gpus"][0]["compute_capability"] = cc
    path = tmp_path / "box.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    result = run_cli("plugins", "list", "--system", str(path))
    _no_traceback(result)
    assert result.returncode == 1 and "gpus[0].compute_capability" in result.stderr


def test_a_malformed_config_file_exits_1_naming_it(run_cli, tmp_path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "mistralrs.toml").write_text("features = [\n", encoding="utf-8")
    result = run_cli("plugins", "list", cwd=project)
    assert result.returncode == 1
    _no_traceback(result)
    assert "mistralrs.toml" in result.stderr


def test_version_and_help(run_cli) -> None:
    version = run_cli("--version")
    assert version.returncode == 0
    assert "0.1.0" in version.stdout
    helped = run_cli("plugins", "--help")
    assert helped.returncode == 0
    for command in ("list", "resolve", "system"):
        assert command in helped.stdout


def test_the_console_script_runs_the_same_cli(cli_env, tmp_path) -> None:
    script = Path(sys.executable).with_name("mistralrs.exe" if sys.platform == "win32" else "mistralrs")
    if not script.exists():
        pytest.skip("console script not installed next to this interpreter")
    result = subprocess.run([str(script), "plugins", "resolve", "--system", "xeon-cpu", "--json"], capture_output=True,
                            text=True, env=cli_env, cwd=tmp_path, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)["active"]) == {"mkl", "cpu"}


# --- A real broken distribution on sys.path --------------------------------------------------------------


@pytest.fixture
def broken_site(tmp_path, fake_distribution) -> Path:
    return fake_distribution(tmp_path / "site", "brokenplug", "raise SystemExit(3)\n")


def test_a_distribution_that_exits_at_import_is_listed_as_broken(run_cli, broken_site, all_features) -> None:
    result = run_cli("plugins", "list", env={"PYTHONPATH": str(broken_site)})
    assert result.returncode == 0, result.stderr
    _no_traceback(result)
    rows = [line for line in result.stdout.splitlines() if " broken " in f" {line} " and "brokenplug" in line]
    assert len(rows) == 1, result.stdout
    row = rows[0]
    assert "SystemExit" in row
    assert "MISTRALRS_DISABLE_PLUGINS=broken" in row
    assert "brokenplug 0.1" in row
    for feature in all_features:
        _row(result.stdout, feature)
    assert " active " in _row(result.stdout, "cpu")


def test_a_broken_distribution_in_json(run_cli, broken_site, all_features) -> None:
    data = _json(run_cli("plugins", "list", "--json", env={"PYTHONPATH": str(broken_site)}))
    broken = [f for f in data["features"] if f["status"] == "broken"]
    assert len(broken) == 1
    assert (broken[0]["plugin"], broken[0]["distribution"], broken[0]["version"]) == ("broken", "brokenplug", "0.1")
    assert any("MISTRALRS_DISABLE_PLUGINS=broken" in r for r in broken[0]["reasons"])
    assert {f["feature"] for f in data["features"] if f["status"] != "broken"} == all_features


def test_a_broken_distribution_is_fatal_in_strict_mode(run_cli, broken_site) -> None:
    result = run_cli("plugins", "list", env={"PYTHONPATH": str(broken_site), "MISTRALRS_STRICT_PLUGINS": "1"})
    assert result.returncode == 1
    _no_traceback(result)
    assert "broken" in result.stderr
    assert "MISTRALRS_STRICT_PLUGINS" in result.stderr
    resolved = run_cli("plugins", "resolve", "--system", "h100",
                       env={"PYTHONPATH": str(broken_site), "MISTRALRS_STRICT_PLUGINS": "1"})
    assert resolved.returncode == 1


def test_a_disabled_broken_distribution_is_skipped_and_named(run_cli, broken_site) -> None:
    env = {"PYTHONPATH": str(broken_site), "MISTRALRS_DISABLE_PLUGINS": "broken", "MISTRALRS_STRICT_PLUGINS": "1"}
    result = run_cli("plugins", "list", env=env)
    assert result.returncode == 0, result.stderr
    assert "disabled by MISTRALRS_DISABLE_PLUGINS: broken (brokenplug)" in result.stdout
    data = _json(run_cli("plugins", "list", "--json", env=env))
    assert {"plugin": "broken", "distribution": "brokenplug", "version": "0.1"} in data["disabled_plugins"]
    assert not any(f["status"] == "broken" for f in data["features"])


def test_a_distribution_raising_an_exception_at_import_is_broken_too(run_cli, tmp_path, fake_distribution) -> None:
    site = fake_distribution(tmp_path / "site", "crashplug", "raise RuntimeError('vendor library exploded')\n",
                              entry_point="crash")
    data = _json(run_cli("plugins", "list", "--json", env={"PYTHONPATH": str(site)}))
    broken = [f for f in data["features"] if f["status"] == "broken"]
    assert [(f["plugin"], f["distribution"]) for f in broken] == [("crash", "crashplug")]
    assert "vendor library exploded" in " ".join(broken[0]["reasons"])


def test_a_plugin_that_crashes_the_interpreter_is_named_in_the_dying_output(run_cli, tmp_path,
                                                                          fake_distribution) -> None:
    # Native code that segfaults cannot be quarantined; the output must still point at the culprit.
    site = fake_distribution(tmp_path / "site", "segvplug", "import ctypes\nctypes.string_at(0)\n",
                              entry_point="segv")
    result = run_cli("plugins", "list", env={"PYTHONPATH": str(site)})
    assert result.returncode == -signal.SIGSEGV
    assert "Fatal Python error: Segmentation fault" in result.stderr
    assert "segvplug_mod.py" in result.stderr, result.stderr
    # The documented way out works.
    disabled = run_cli("plugins", "list", env={"PYTHONPATH": str(site), "MISTRALRS_DISABLE_PLUGINS": "segv"})
    assert disabled.returncode == 0, disabled.stderr


def test_a_healthy_third_party_distribution_adds_its_feature(run_cli, tmp_path, fake_distribution) -> None:
    source = (
        "from mistralrs_torch import FeatureManifest, hookimpl\n\n"
        "@hookimpl\n"
        "def mistralrs_features():\n"
        "    return (FeatureManifest(name='rocm', summary='AMD GPUs', distribution='rocmplug', provides=('device',),\n"
        "                            platforms=('linux',)),)\n")
    site = fake_distribution(tmp_path / "site", "rocmplug", source, entry_point="rocm")
    data = _json(run_cli("plugins", "list", "--json", "--system", "xeon-cpu", env={"PYTHONPATH": str(site)}))
    rocm = next(f for f in data["features"] if f["feature"] == "rocm")
    assert (rocm["status"], rocm["plugin"], rocm["distribution"], rocm["version"]) == ("active", "rocm", "rocmplug",
                                                                                        "0.1")
    assert rocm["provides"] == ["device"]
