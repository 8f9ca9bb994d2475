"""`run_doctor` in process: sections, verification, exit codes, profiles, planted faults, the JSON schema."""

from __future__ import annotations

import importlib.metadata
import json
import math
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import mistralrs_torch
from mistralrs_torch import load_system
from mistralrs_torch.doctor import DOCTOR_SCHEMA, SECTIONS, DoctorReport, run_doctor
from mistralrs_torch.ops import OPS as REGISTRY
from mistralrs_torch.system import PROFILE_NAMES

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "docs" / "doctor.schema.json"
GROUP = "mistralrs.plugins"
GENERIC = {"cpu-attention", "cpu-matmul", "cpu-layers"}
OPS = tuple(op.name for op in REGISTRY)

_FAKE_BACKEND_PLUGIN = '''
import torch
from mistralrs_torch import FeatureManifest, hookimpl
from mistralrs_torch.ops import Support
from mistralrs_torch.generic import GenericAttention

MODE = {mode!r}


class PlantedAttention:
    name = "planted-attention"
    feature = "fake-attn"
    dispatch_priority = 500

    def supports(self, call):
        return Support(call.device == "cpu", "cpu only")

    def _spoil(self, out):
        if MODE == "offset":
            return out + 1.0
        if MODE == "nan":
            return out * float("nan")
        if MODE == "shape":
            return out[..., :-1]
        if MODE == "raise":
            raise RuntimeError("planted kernel crashed")
        return out

    if MODE == "kernel":
        def kernel_for(self, call):
            # The op methods are exact, but the kernel the runtime binds for dense attention is wrong.
            if call.op == "attention":
                return lambda q, k, v, *, causal=False, mask=None, scale=None: GenericAttention().attention(
                    q, k, v, causal=causal, mask=mask, scale=scale) + 1.0
            return None

    def attention(self, q, k, v, *, causal=False, mask=None, scale=None):
        return self._spoil(GenericAttention().attention(q, k, v, causal=causal, mask=mask, scale=scale))

    def paged_attention(self, q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
        return self._spoil(GenericAttention().paged_attention(q, k_cache, v_cache, block_table, seq_lens, scale=scale))


@hookimpl
def mistralrs_features():
    return (FeatureManifest(name="fake-attn", summary="a planted attention backend", distribution="fake-dist",
                            provides=("attention",), selection_priority=500),)


@hookimpl
def mistralrs_attention_backends(active):
    return [PlantedAttention()] if "fake-attn" in active else []
'''


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    data = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(data)
    return data


def validate(report: DoctorReport, schema: dict[str, Any]) -> dict[str, Any]:
    """The report's JSON, as the CLI prints it, parsed back strictly and validated."""
    text = json.dumps(report.to_json(), allow_nan=False)  # what a strict JSON reader accepts
    data = json.loads(text)
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(data)
    assert data["ok"] is (report.exit_code == 0)
    return data


@pytest.fixture(scope="module")
def clean_cwd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("doctor_cwd")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        yield folder


@pytest.fixture(autouse=True)
def _in_clean_cwd(clean_cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(clean_cwd)


@pytest.fixture(scope="module")
def here(clean_cwd: Path) -> DoctorReport:
    """Doctor on this machine with the installed plugins and no MISTRALRS_* variable (verification on)."""
    return run_doctor(environ={})


def doctor_with(entry_points: list[importlib.metadata.EntryPoint], environ: Mapping[str, str] | None = None,
                **kwargs: Any) -> DoctorReport:
    environ = dict(environ or {})
    manager = mistralrs_torch.PluginManager(entry_points=entry_points, environ=environ, strict=False)
    return run_doctor(environ=environ, manager=manager, **kwargs)


def checks(report: DoctorReport, section: str, name: str | None = None) -> list[Any]:
    return [c for c in report.sections[section] if name is None or c.subject == name]


# ---------------------------------------------------------------------------------------------
# this machine
# ---------------------------------------------------------------------------------------------

def test_every_section_is_present_and_non_empty(here: DoctorReport) -> None:
    assert SECTIONS[-1] == "verification"
    for section in SECTIONS[:-1]:
        assert here.sections.get(section), f"section {section} is missing or empty"
    assert here.verifications and here.verification_note == ""
    text = here.to_text()
    for section in SECTIONS:
        assert f"\n{section.upper()}\n" in text


def test_system_section_reports_os_python_torch_cpu_memory(here: DoctorReport) -> None:
    names = {c.subject for c in here.sections["system"]}
    assert {"os", "python", "cpu", "memory", "torch"} <= names
    cpu = checks(here, "system", "cpu")[0]
    assert "instruction sets" in cpu.message
    assert checks(here, "system", "python")[0].message.startswith(f"{sys.version_info.major}.{sys.version_info.minor}")
    # The deep probe confirmed the cheap probe's torch facts on this machine.
    assert checks(here, "system", "torch version")[0].status == "ok"


def test_generic_backends_verify_for_every_op_at_float32_and_bfloat16(here: DoctorReport) -> None:
    generic = [v for v in here.verifications if v.backend in GENERIC]
    got = {(v.op, v.dtype) for v in generic}
    assert got == {(op, dtype) for op in OPS for dtype in ("float32", "bfloat16")}
    for v in generic:
        assert v.result == "verified", v
        assert v.device == "cpu" and v.feature == "cpu"
        assert v.max_error is not None and v.tolerance is not None and 0 <= v.max_error <= v.tolerance
        assert v.seconds is not None and v.seconds >= 0
    float32 = [v for v in generic if v.dtype == "float32"]
    assert all(v.tolerance <= 1e-4 and v.max_error < 1e-5 for v in float32)


def test_this_machine_exits_zero(here: DoctorReport, schema: dict[str, Any]) -> None:
    assert here.errors == () and here.failed == () and here.exit_code == 0
    assert all(v.result == "verified" for v in here.verifications)
    assert here.to_text().rstrip().splitlines()[-1].startswith("OK: 0 error(s)")
    data = validate(here, schema)
    assert data["schema"] == DOCTOR_SCHEMA == "mistralrs.doctor/1"
    assert data["system"] == "this machine" and data["verification"]["note"] == ""


def test_features_section_lists_every_installed_feature(here: DoctorReport) -> None:
    statuses = {c.subject: c.message.split(":")[0] for c in here.sections["features"] if c.status in ("ok", "info")}
    assert statuses["cpu"] == "active"
    every = {"cuda", "cudnn", "flash-attn", "flash-attn-v3", "metal", "accelerate", "mkl", "nccl", "ring"}
    assert every <= set(statuses)
    assert statuses["metal"] == "unavailable"


def test_mkl_on_an_amd_cpu_warns_but_does_not_fail(here: DoctorReport) -> None:
    system = mistralrs_torch.PluginManager(environ={}).probe_system()
    if system.cpu.vendor != "amd" or "mkl" not in {c.subject for c in here.sections["features"] if c.status == "ok"}:
        pytest.skip("this machine is not an AMD CPU with mkl active (the epyc-cpu profile test covers the rule)")
    notes = [c for c in checks(here, "features", "mkl") if c.status == "warning"]
    assert any("AMD" in c.message and "Intel-optimized" in c.message for c in notes)
    assert here.exit_code == 0


def test_mkl_amd_note_on_the_epyc_profile() -> None:
    report = run_doctor(environ={}, system=load_system("epyc-cpu"))
    mkl = checks(report, "features", "mkl")
    assert any(c.status == "ok" and c.message.startswith("active") for c in mkl)
    assert any(c.status == "warning" and "AMD" in c.message for c in mkl)
    assert report.exit_code == 0


# ---------------------------------------------------------------------------------------------
# simulated machines
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_profiles_skip_verification_and_exit_zero(profile: str, schema: dict[str, Any]) -> None:
    report = run_doctor(environ={}, system=load_system(profile))
    assert report.verifications == ()
    assert "skipped" in report.verification_note and profile in report.verification_note
    assert report.exit_code == 0, report.errors
    assert report.system == profile
    for section in SECTIONS[:-1]:
        assert report.sections[section], f"{profile}: section {section} is empty"
    assert f"-- {report.verification_note}" in report.to_text()
    validate(report, schema)


@pytest.mark.parametrize(
    ("profile", "active", "inactive"),
    [
        ("h100", {"cuda", "cudnn", "flash-attn-v3"}, {"flash-attn", "metal"}),
        ("h100-fa2", {"cuda", "flash-attn"}, {"flash-attn-v3"}),
        ("a100", {"cuda", "cudnn", "flash-attn"}, {"flash-attn-v3"}),
        ("apple-m2", {"metal", "accelerate"}, {"cuda", "flash-attn", "mkl"}),
    ],
)
def test_profile_feature_section(profile: str, active: set[str], inactive: set[str]) -> None:
    report = run_doctor(environ={}, system=load_system(profile))
    shown = {c.subject for c in report.sections["features"] if c.status == "ok" and c.message.startswith("active")}
    assert active <= shown
    assert not (inactive & shown)
    gpus = [c for c in report.sections["accelerators"] if c.subject.startswith("gpu")]
    if profile != "apple-m2":
        assert gpus and "compute capability" in gpus[0].message


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_profile_result_does_not_depend_on_this_machines_torch(profile: str) -> None:
    """--system describes another machine: no check may judge it by the torch imported here.

    Doctor of a profile must give the same answer whether or not torch happens to be imported
    already in this process (a long-running program, a notebook, a test session)."""
    import torch  # noqa: F401 - imported on purpose, as after any verification run

    report = run_doctor(environ={}, system=load_system(profile))
    assert report.exit_code == 0, report.errors


def test_h100_recommendation_names_flash_attn_v3() -> None:
    report = run_doctor(environ={}, system=load_system("h100"))
    (hardware,) = report.sections["recommendation"]  # every recommended feature is installed and active
    assert hardware.message == "NVIDIA Hopper (H100): recommended features: cuda cudnn flash-attn-v3 (all active)"


def test_profile_report_text_names_the_profile() -> None:
    report = run_doctor(environ={}, system=load_system("h100"))
    text = report.to_text()
    assert text.startswith("mistralrs ") and "h100" in text.splitlines()[0]
    assert text.count(report.verification_note) == 1


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


def test_invalid_explicit_selection_is_an_error_with_the_fix(schema: dict[str, Any]) -> None:
    report = run_doctor(environ={}, features="metal")
    errors = [c for c in report.sections["features"] if c.status == "error"]
    assert errors and errors[0].subject == "metal"
    assert "macOS-only" in errors[0].message and "remove the metal feature" in errors[0].fix
    assert report.exit_code == 1 and report.verifications == ()
    assert "skipped" in report.verification_note
    assert report.to_text().rstrip().splitlines()[-1].startswith("PROBLEMS")
    data = validate(report, schema)
    assert data["ok"] is False


def test_invalid_selection_from_the_environment_is_an_error_too() -> None:
    report = run_doctor(environ={"MISTRALRS_FEATURES": "metal cuda"}, verify=False)
    assert {c.subject for c in report.errors} >= {"metal", "cuda"}
    assert report.exit_code == 1


def test_planted_wrong_backend_is_marked_failed_and_doctor_exits_one(fake_plugin, schema) -> None:
    ep = fake_plugin(_FAKE_BACKEND_PLUGIN.format(mode="offset"), name="planted")
    report = doctor_with([ep])
    planted = [v for v in report.verifications if v.backend == "planted-attention"]
    assert {v.op for v in planted} == {"attention", "paged_attention"}
    for v in planted:
        assert v.result == "failed" and v.feature == "fake-attn"
        assert v.max_error is not None and v.tolerance is not None and v.max_error > v.tolerance
        assert v.detail
    # The generic backends are still verified next to it.
    assert all(v.result == "verified" for v in report.verifications if v.backend in GENERIC)
    assert report.failed and report.exit_code == 1
    text = report.to_text()
    assert "XX attention / planted-attention (fake-attn)" in text and "PROBLEMS" in text
    assert validate(report, schema)["ok"] is False


def test_planted_raising_backend_is_failed(fake_plugin, schema) -> None:
    ep = fake_plugin(_FAKE_BACKEND_PLUGIN.format(mode="raise"), name="planted")
    report = doctor_with([ep])
    planted = [v for v in report.verifications if v.backend == "planted-attention"]
    assert planted and all(v.result == "failed" for v in planted)
    assert all("RuntimeError" in v.detail and "planted kernel crashed" in v.detail for v in planted)
    assert report.exit_code == 1
    validate(report, schema)


@pytest.mark.parametrize("mode", ["nan", "shape"])
def test_planted_nan_or_misshapen_output_is_failed_and_the_json_stays_valid(fake_plugin, schema, mode) -> None:
    ep = fake_plugin(_FAKE_BACKEND_PLUGIN.format(mode=mode), name="planted")
    report = doctor_with([ep])
    planted = [v for v in report.verifications if v.backend == "planted-attention"]
    assert planted and all(v.result == "failed" for v in planted)
    assert report.exit_code == 1
    # `doctor --json` must print standard JSON (no Infinity/NaN tokens) that the schema accepts.
    validate(report, schema)


def test_a_correct_extra_backend_is_verified(fake_plugin) -> None:
    ep = fake_plugin(_FAKE_BACKEND_PLUGIN.format(mode="exact"), name="planted")
    report = doctor_with([ep])
    planted = [v for v in report.verifications if v.backend == "planted-attention"]
    assert {(v.op, v.dtype) for v in planted} == {
        (op, d) for op in ("attention", "paged_attention") for d in ("float32", "bfloat16")
    }
    assert all(v.result == "verified" for v in planted)
    assert report.exit_code == 0


def test_doctor_verifies_the_kernel_the_runtime_binds(fake_plugin) -> None:
    """A backend may hand the runtime a specialised kernel per call (kernel_for); doctor must verify
    that kernel, the one model code will run, not only the backend's op method."""
    ep = fake_plugin(_FAKE_BACKEND_PLUGIN.format(mode="kernel"), name="planted")
    manager = mistralrs_torch.PluginManager(entry_points=[ep], environ={}, strict=False)
    from mistralrs_torch.runtime import Runtime

    runtime = Runtime.create(environ={}, manager=manager)
    import torch

    q, k, v = torch.randn(1, 4, 3, 64), torch.randn(1, 2, 5, 64), torch.randn(1, 2, 5, 64)
    wrong = runtime.attention(q, k, v, causal=True) - runtime.attention_backends[-1].attention(q, k, v, causal=True)
    assert torch.allclose(wrong, torch.ones_like(wrong)), "the runtime should run the kernel_for kernel"
    report = run_doctor(environ={}, manager=mistralrs_torch.PluginManager(entry_points=[ep], environ={}, strict=False))
    dense = [v for v in report.verifications if v.backend == "planted-attention" and v.op == "attention"]
    assert dense and all(v.result == "failed" for v in dense), dense
    assert report.exit_code == 1


_BROKEN_AT_IMPORT = 'raise ImportError("libfake.so: cannot open shared object file")\n'


def test_broken_plugin_is_a_warning_and_doctor_still_runs(fake_plugin, schema) -> None:
    ep = fake_plugin(_BROKEN_AT_IMPORT, name="brokenplug")
    report = doctor_with([ep])
    (check,) = checks(report, "plugins", "brokenplug")
    assert check.status == "warning"
    assert "import" in check.message and "libfake.so" in check.message
    assert "MISTRALRS_DISABLE_PLUGINS=brokenplug" in check.fix
    assert report.exit_code == 0
    assert all(v.result == "verified" for v in report.verifications)
    validate(report, schema)


def test_broken_plugin_is_an_error_under_strict_plugins(fake_plugin, schema) -> None:
    ep = fake_plugin(_BROKEN_AT_IMPORT, name="brokenplug")
    report = doctor_with([ep], {"MISTRALRS_STRICT_PLUGINS": "1"}, verify=False)
    (check,) = checks(report, "plugins", "brokenplug")
    assert check.status == "error"
    assert report.exit_code == 1
    validate(report, schema)


_CHECKS_PLUGIN = """
from mistralrs_torch import FeatureManifest, hookimpl
from mistralrs_torch.ops import CheckResult


@hookimpl
def mistralrs_features():
    return (FeatureManifest(name="fake-conf", summary="a fake feature with its own checks", distribution="fake-dist",
                            provides=("matmul",)),)


@hookimpl
def mistralrs_doctor_checks(active, system):
    {body}
"""


def test_plugin_doctor_checks_land_in_configuration_with_the_plugin_name(fake_plugin, schema) -> None:
    ep = fake_plugin(
        _CHECKS_PLUGIN.format(
            body='return [CheckResult("FAKE_CONFIG", "FAKE_CONFIG is malformed", "write valid JSON", status="error"),'
            ' CheckResult("fake world size", "2 ranks", status="ok")]'
        ),
        name="confplug",
    )
    report = doctor_with([ep], verify=False)
    (error,) = [c for c in report.sections["configuration"] if c.subject == "FAKE_CONFIG"]
    assert error.status == "error" and error.plugin == "confplug" and error.fix == "write valid JSON"
    assert any(c.subject == "fake world size" and c.plugin == "confplug" for c in report.sections["configuration"])
    assert report.exit_code == 1
    assert "FAKE_CONFIG [confplug]: FAKE_CONFIG is malformed" in report.to_text()
    validate(report, schema)


def test_plugin_doctor_checks_judge_the_diagnosed_environment_not_os_environ(fake_plugin, monkeypatch) -> None:
    # The hook names only the parameter it uses (as pluggy allows) and reads the doctor's environ.
    source = _CHECKS_PLUGIN.replace(
        "def mistralrs_doctor_checks(active, system):", "def mistralrs_doctor_checks(environ):"
    )
    ep = fake_plugin(
        source.format(body='return [CheckResult("FAKE_SETTING", environ.get("FAKE_SETTING", "unset"), status="info")]'),
        name="confplug",
    )
    monkeypatch.setenv("FAKE_SETTING", "from os.environ")
    report = doctor_with([ep], {"FAKE_SETTING": "from the diagnosed environment"}, verify=False)
    (check,) = checks(report, "configuration", "FAKE_SETTING")
    assert check.message == "from the diagnosed environment" and check.plugin == "confplug"
    assert checks(report, "plugins", "confplug")[0].status == "ok"


def test_plugin_whose_doctor_hook_raises_is_quarantined_and_shown(fake_plugin, schema) -> None:
    ep = fake_plugin(_CHECKS_PLUGIN.format(body='raise RuntimeError("check exploded")'), name="confplug")
    report = doctor_with([ep], verify=False)
    (check,) = checks(report, "plugins", "confplug")
    assert (
        check.status == "warning" and "check exploded" in check.message and "mistralrs_doctor_checks" in check.message
    )
    assert report.exit_code == 0
    validate(report, schema)


def test_plugin_check_with_an_invalid_status_does_not_break_the_report(fake_plugin, schema) -> None:
    """A check whose status is not ok/info/warning/error breaks the hook's contract: doctor must not
    print it as-is (the JSON would break its own schema and the exit status would ignore it)."""
    body = 'return [CheckResult("FAKE", "something is wrong", status="fatal")]'
    ep = fake_plugin(_CHECKS_PLUGIN.format(body=body), name="confplug")
    report = doctor_with([ep], verify=False)
    validate(report, schema)


def test_malformed_runtime_switches_are_configuration_errors() -> None:
    for name in ("MISTRALRS_NO_FALLBACK", "MISTRALRS_PAGED_ATTN"):
        report = run_doctor(environ={name: "maybe"})
        errors = [c for c in report.errors if name in c.message]
        assert errors, (name, report.sections["configuration"])
        assert report.exit_code == 1


@pytest.mark.parametrize(
    ("value", "status", "words"),
    [
        ("cpu:32", "info", "explicit map from MISTRALRS_DEVICE_LAYERS: cpu: 32 layers (32 layers"),
        ("0:16;1:16", "error", "device map names '0', which is not a device here: devices are cpu"),
        ("cpu=32", "error", "device map entry 'cpu=32' is not DEVICE:LAYERS"),
    ],
)
def test_device_layers_variable_is_judged_against_this_runtimes_devices(value, status, words, schema) -> None:
    report = run_doctor(environ={"MISTRALRS_DEVICE_LAYERS": value, "MISTRALRS_FEATURES": "none"})
    (check,) = checks(report, "configuration", "device layers")
    assert check.status == status and words in check.message, check
    assert report.exit_code == (1 if status == "error" else 0)
    assert not [
        c
        for c in report.sections["configuration"]
        if "MISTRALRS_DEVICE_LAYERS" in c.message and c.subject != "device layers"
    ]  # a known variable, not flagged as unknown
    validate(report, schema)


def test_device_layers_variable_under_nccl_is_an_error_naming_the_contradiction() -> None:
    from types import SimpleNamespace

    from mistralrs_torch.doctor import device_layers_check
    from mistralrs_torch.ops import Device

    backends = [SimpleNamespace(feature="nccl", one_device_per_rank=True)]
    devices = [Device("cuda:0", "gpu", "cuda"), Device("cuda:1", "gpu", "cuda")]
    (check,) = device_layers_check(backends, devices, {"MISTRALRS_DEVICE_LAYERS": "0:16;1:16"})
    assert check.status == "error" and "nccl is active: one process per device" in check.message
    assert check.fix == "unset MISTRALRS_DEVICE_LAYERS: each process here computes on one device"
    assert device_layers_check(backends, devices, {}) == []


def test_strict_plugins_with_a_bad_value_is_a_configuration_error() -> None:
    report = run_doctor(environ={"MISTRALRS_STRICT_PLUGINS": "sometimes"}, verify=False)
    errors = [c for c in report.sections["configuration"] if c.status == "error"]
    assert errors and "MISTRALRS_STRICT_PLUGINS" in errors[0].message
    assert report.exit_code == 1


def test_unknown_mistralrs_variable_warns_with_the_closest_name(schema) -> None:
    report = run_doctor(environ={"MISTRALRS_FEATRUES": "cuda"}, verify=False)
    (check,) = [c for c in report.sections["configuration"] if "MISTRALRS_FEATRUES" in c.message]
    assert check.status == "warning" and "MISTRALRS_FEATURES" in check.fix
    assert report.exit_code == 0
    validate(report, schema)


def test_variables_declared_by_the_core_or_a_manifest_are_not_unknown() -> None:
    environ = {
        "MISTRALRS_NO_NCCL": "1",
        "MISTRALRS_MN_LOCAL_WORLD_SIZE": "2",
        "MISTRALRS_NO_FALLBACK": "0",
        "MISTRALRS_PAGED_ATTN": "0",
        "MISTRALRS_DISABLE_PLUGINS": "",
    }
    report = run_doctor(environ=environ, verify=False)
    assert not [c for c in report.sections["configuration"] if c.message.startswith("unknown variable")]


def test_malformed_mistralrs_toml_in_the_cwd_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, schema
) -> None:
    (tmp_path / "mistralrs.toml").write_text("features = [cuda\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    report = run_doctor(environ={}, verify=False)
    errors = [c for c in report.sections["configuration"] if c.status == "error"]
    assert errors and "mistralrs.toml" in errors[0].message
    assert report.exit_code == 1
    assert "skipped" in report.verification_note
    validate(report, schema)


def test_mistralrs_toml_with_a_wrong_type_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mistralrs.toml").write_text("features = 3\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    report = run_doctor(environ={}, verify=False)
    assert any("features" in c.message for c in report.errors)
    assert report.exit_code == 1


def test_no_verify_skips_verification_with_a_note(schema) -> None:
    report = run_doctor(environ={}, verify=False)
    assert report.verifications == () and "--no-verify" in report.verification_note
    assert report.exit_code == 0
    validate(report, schema)


def test_schema_rejects_reports_that_break_it(here: DoctorReport, schema: dict[str, Any]) -> None:
    """The schema is strict enough to catch drift (guards against a schema that accepts anything)."""
    validator = jsonschema.Draft202012Validator(schema)
    good = json.loads(json.dumps(here.to_json()))
    assert validator.is_valid(good)
    mutations: list[Callable[[dict[str, Any]], None]] = [
        lambda d: d.update(schema="mistralrs.doctor/2"),
        lambda d: d.pop("sections"),
        lambda d: d["sections"].pop("plugins"),
        lambda d: d["sections"]["system"][0].update(status="fatal"),
        lambda d: d["sections"]["system"][0].pop("fix"),
        lambda d: d["sections"]["system"][0].update(extra=1),
        lambda d: d["verification"]["results"][0].update(result="passed"),
        lambda d: d["verification"]["results"][0].update(max_error="small"),
        lambda d: d["verification"]["results"][0].update(max_error=None),
        lambda d: d.update(unexpected=True),
        lambda d: d.update(ok="yes"),
    ]
    for mutate in mutations:
        bad = json.loads(json.dumps(good))
        mutate(bad)
        assert not validator.is_valid(bad), bad


def test_max_errors_in_json_are_finite_numbers_or_null(here: DoctorReport) -> None:
    for result in here.to_json()["verification"]["results"]:
        assert result["max_error"] is None or math.isfinite(result["max_error"])
