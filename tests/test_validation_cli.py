"""Hostile input at the command line, in the environment and in config files: exit 1 for malformed configuration,
2 for usage, a JSON error object under --json, the field or variable named, values echoed cut short, never a
traceback. One test per finding of the hostile-input review, then hypothesis-driven command lines.

Commands run in-process (click's runner: the same `main` the console script runs), so hundreds stay fast.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mistralrs_torch import ConfigError, PluginManager, Selection, load_system, resolve
from mistralrs_torch.cli import cli
from mistralrs_torch.cli._render import list_text
from mistralrs_torch.doctor import run_doctor

ERROR_SCHEMA = "mistralrs.error/1"


def _run(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Result:
    """The CLI in-process, in ``cwd``, with no MISTRALRS_* or rank variable but those in ``env``."""
    cleared: dict[str, str | None] = {k: None for k in os.environ if k.startswith("MISTRALRS_") or k in (
        "RING_CONFIG", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    previous = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, args, env={**cleared, **(env or {})}, prog_name="mistralrs")
    finally:
        os.chdir(previous)


def _clean(result: Result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


def _write(folder: Path, name: str, text: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")
    return str(folder / name)


def _lots(tmp_path: Path) -> str:
    data = json.loads(load_system("h100").dumps())
    data["gpus"][0]["memory_free"] = "lots"
    return _write(tmp_path, "lots.json", json.dumps(data))


# -- one test per finding ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["plugins", "list"], ["doctor", "--no-verify"]])
def test_memory_free_lots_fails_list_and_doctor_alike_naming_the_field(tmp_path: Path, args: list[str]) -> None:
    result = _run([*args, "--system", _lots(tmp_path)])
    _clean(result)
    assert result.exit_code == 1 and "gpus[0].memory_free must be null or an integer" in result.stderr


def test_a_malformed_variable_does_not_crash_help() -> None:
    result = _run(["--help"], {"MISTRALRS_PLUGIN_AUTOLOAD": "maybe"})
    _clean(result)
    assert result.exit_code == 1 and "MISTRALRS_PLUGIN_AUTOLOAD='maybe' is not a boolean" in result.stderr


@pytest.mark.parametrize(("file", "content", "words"), [
    ("mistralrs.toml", 'feature = ["cuda"]\n', "feature is not a known field (did you mean 'features'?)"),
    ("mistralrs.toml", 'Features = ["cuda"]\n', "Features is not a known field (did you mean 'features'?)"),
    ("mistralrs.toml", '[mistralrs]\nfeatures = ["cuda"]\n', "mistralrs is not a known field (mistralrs.toml takes"),
    ("mistralrs.toml", 'features = ["mkl"]\nthreads = 4\n', "threads is not a known field"),
    ("pyproject.toml", '[tool.mistralrs]\nfeature = ["mkl"]\n', "[tool.mistralrs] is not a valid mistralrs"),
    ("pyproject.toml", '[tool.mistralrs]\nfeatures = ["mkl"]\nextra = 1\n', "extra is not a known field"),
    ("pyproject.toml", '[mistralrs]\nfeatures = ["mkl"]\n', "has a [mistralrs] table, which is not read there"),
    ("pyproject.toml", '[tool.mistralrs-torch]\nfeatures = ["mkl"]\n', "did you mean [tool.mistralrs]?"),
    ("mistralrs.toml", "features = " + "[" * 3000 + "]" * 3000, "nests arrays or tables too deeply"),
    ("mistralrs.toml", "features = " + "9" * 5000, "a number too long to read"),
])
def test_config_files_are_checked_key_by_key(tmp_path: Path, file: str, content: str, words: str) -> None:
    _write(tmp_path, file, content)
    result = _run(["plugins", "list"], cwd=tmp_path)
    _clean(result)
    assert result.exit_code == 1 and words in result.stderr, result.stderr


def test_a_5mb_feature_name_is_not_echoed_whole() -> None:
    result = _run(["plugins", "resolve", "--features", "cuda " + "x" * 5_000_000])
    _clean(result)
    assert result.exit_code == 1 and "(5000000 characters)" in result.stderr and len(result.output) < 1000


def test_a_blank_ring_config_activates_nothing_and_doctor_agrees() -> None:
    manager = PluginManager(environ={})
    resolution = resolve(manager.features, manager.broken, Selection(), load_system("xeon-cpu"), {"RING_CONFIG": " "})
    assert "ring" not in resolution.active
    report = run_doctor(system=load_system("xeon-cpu"), verify=False, environ={"RING_CONFIG": " "}, manager=manager)
    assert report.exit_code == 0 and not any("RING_CONFIG" in c.subject for s in report.sections.values() for c in s)


@pytest.mark.parametrize(("variable", "value"), [
    ("MISTRALRS_MN_LOCAL_WORLD_SIZE", "\u00b2"), ("LOCAL_WORLD_SIZE", "\u0662"),
    ("MISTRALRS_COLLECTIVE_TIMEOUT", "1e308"), ("MISTRALRS_RENDEZVOUS_TIMEOUT", "nan"),
])
def test_bad_nccl_variables_are_doctor_errors_not_a_broken_plugin(variable: str, value: str) -> None:
    env = {variable: value, **({"MISTRALRS_MN_LOCAL_WORLD_SIZE": "8"} if variable == "LOCAL_WORLD_SIZE" else {})}
    result = _run(["doctor", "--no-verify", "--json", "--system", "multi-gpu-8xh100", "--features", "nccl"], env)
    _clean(result)
    report = json.loads(result.stdout)
    assert result.exit_code == 1 and not report["ok"]
    errors = [c for section in report["sections"].values() for c in section if c["status"] == "error"]
    assert any(variable in c["message"] or variable in c["name"] for c in errors), errors
    assert all(c["status"] != "warning" or "broken" not in c["message"] for c in report["sections"]["plugins"])


def test_huge_counts_are_refused_before_anything_is_built() -> None:
    started = time.monotonic()
    result = _run(["ring", "configs", "--world-size", str(1 << 40), "--out", "never"])
    _clean(result)
    assert result.exit_code == 2 and "1<=x" not in result.stderr and "65536" in result.stderr
    assert time.monotonic() - started < 10 and not Path("never").exists()


@pytest.mark.parametrize(("args", "code", "kind"), [
    (["plugins", "list", "--json", "--bogus"], 2, "NoSuchOption"),
    (["plugins", "resolve", "--json", "--system", "nosuch"], 2, "BadParameter"),
    (["plugins", "list", "--json", "--features", "auto cuda"], 1, "ConfigError"),
    (["plugins", "system", "--json", "--system", "LOTS"], 1, "SystemProfileError"),
    (["doctor", "--json", "--no-verify", "--system", "LOTS"], 1, "SystemProfileError"),
    (["plugins", "list", "--json"], 1, "InputError"),  # with MISTRALRS_STRICT_PLUGINS=maybe
])
def test_json_is_honoured_on_every_error_path(tmp_path: Path, args: list[str], code: int, kind: str) -> None:
    args = [_lots(tmp_path) if a == "LOTS" else a for a in args]
    env = {"MISTRALRS_STRICT_PLUGINS": "maybe"} if args == ["plugins", "list", "--json"] else {}
    result = _run(args, env)
    _clean(result)
    data = json.loads(result.stdout)
    assert result.exit_code == code and result.stderr == ""
    assert data["schema"] == ERROR_SCHEMA and data["error"]["type"] == kind and data["error"]["exit_code"] == code
    assert data["error"]["message"]


def test_local_rank_is_parsed_strictly_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    from mistralrs_torch.parallel import local_rank, torchrun_rendezvous
    from mistralrs_torch_ring._rendezvous import ring_rendezvous

    bad = {"LOCAL_RANK": "\u00b2", "RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    for read in (local_rank, torchrun_rendezvous, ring_rendezvous):
        with pytest.raises(ConfigError, match=r"LOCAL_RANK='\u00b2' is not an integer \(ASCII digits 0-9\)"):
            read(bad)
    assert local_rank({"LOCAL_RANK": " 3 "}) == 3 and local_rank({}) == 0
    from mistralrs_torch import Runtime

    monkeypatch.setenv("LOCAL_RANK", "\u00b2")
    with pytest.raises(ConfigError, match="LOCAL_RANK"):  # it used to fall back to 0 in silence, or crash int()
        Runtime.create(environ={"LOCAL_RANK": "\u00b2"})


def test_a_plugin_that_registers_no_feature_is_listed_with_a_warning(fake_plugin: Any) -> None:
    empty = fake_plugin("""
        from mistralrs_torch import hookimpl

        @hookimpl
        def mistralrs_features():
            return ()
        """, name="hollow")
    manager = PluginManager(entry_points=[empty], environ={})
    assert [p.name for p in manager.featureless] == ["hollow"] and not manager.broken
    resolution = resolve(manager.features, manager.broken, Selection(), load_system("xeon-cpu"), {})
    listed = list_text(resolution, manager)
    assert "warning: plugin hollow (unknown distribution unknown) registers no feature" in listed
    report = run_doctor(system=load_system("xeon-cpu"), verify=False, environ={}, manager=manager)
    (check,) = [c for c in report.sections["plugins"] if c.subject == "hollow"]
    assert check.status == "warning" and "registers no feature" in check.message
    assert "MISTRALRS_DISABLE_PLUGINS=hollow" in check.fix


# -- hypothesis: any command line, environment and files -----------------------------------------------------

_VARIABLES = ("MISTRALRS_FEATURES", "MISTRALRS_STRICT_PLUGINS", "MISTRALRS_PLUGIN_AUTOLOAD",
              "MISTRALRS_DISABLE_PLUGINS", "MISTRALRS_COLLECTIVE_TIMEOUT", "MISTRALRS_RENDEZVOUS_TIMEOUT",
              "MISTRALRS_NO_NCCL", "RING_CONFIG", "LOCAL_RANK", "WORLD_SIZE", "RANK", "MASTER_PORT", "MASTER_ADDR",
              "MISTRALRS_MN_LOCAL_WORLD_SIZE",
              "MISTRALRS_DEVICE_LAYERS", "MISTRALRS_PAGED_ATTN", "CUDA_VISIBLE_DEVICES")
_text = st.one_of(st.text(max_size=12), st.sampled_from(
    ["", "1", "0", "auto", "none", "cuda", "mkl ring", "\u00b2", "1e308", "nan", "-1", "9" * 30, "h100", "x" * 300]))
_env_text = _text.map(lambda t: t.replace("\x00", ""))
#: What each command accepts; the values are drawn from anything at all.
_ACCEPTS = {
    ("plugins", "list"): ("--system", "--features", "--json"),
    ("plugins", "resolve"): ("--system", "--features", "--json"),
    ("plugins", "system"): ("--system", "--json"),
    ("doctor", "--no-verify"): ("--system", "--features", "--json"),
    ("ring", "configs", "--out", "out"): ("--world-size", "--hosts", "--master-ip", "--master-port", "--base-port"),
    ("ring", "check"): (),
    ("launch",): ("-n", "--backend", "--grace", "--master-addr", "--master-port"),
    ("plugins", "matrix"): (),
}


@st.composite
def _command_lines(draw: st.DrawFn) -> list[str]:
    """A command with options it accepts (mostly) and values of any kind; FILE stands for a snapshot file."""
    command = draw(st.sampled_from(sorted(_ACCEPTS)))
    names = list(_ACCEPTS[command]) + ["--bogus"] * draw(st.sampled_from([0, 0, 0, 1]))
    args = list(command)
    for name in draw(st.lists(st.sampled_from(names), max_size=4)) if names else []:
        if name in ("--json", "--bogus"):
            args.append(name)
        elif name == "--system":
            args += [name, draw(st.one_of(st.sampled_from(["h100", "epyc-cpu", "apple-m2", "FILE"]), _text))]
        elif name in ("-n", "--world-size", "--master-port", "--base-port") and draw(st.booleans()):
            args += [name, str(draw(st.integers(min_value=-5, max_value=1 << 41)))]
        else:
            args += [name, draw(_text)]
    if command == ("ring", "check"):
        args += draw(st.lists(st.sampled_from(["FILE", "nofile.json"]), max_size=2))
    if command == ("launch",):
        args += ["--", "/nonexistent/command"]  # never starts anything: the command is checked first
    return args


_files = st.one_of(st.text(max_size=80), st.sampled_from(
    ['{"schema": "mistralrs.system/1"}', '{"schema": "mistralrs.system/1", "gpus": [{"index": 0}]}', "[" * 100,
     '{"schema": "mistralrs.system/1", "cpu": {"cores": -1}}', "features = [\"cuda\"]\nfeature = 1"]))


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(args=_command_lines(), env=st.dictionaries(st.sampled_from(_VARIABLES), _env_text, max_size=3),
       system_file=_files, config=st.one_of(st.none(), _files))
def test_any_command_line_exits_0_1_or_2_with_a_message_and_no_traceback(
        tmp_path_factory: pytest.TempPathFactory, args: list[str], env: dict[str, str], system_file: str,
        config: str | None) -> None:
    folder = tmp_path_factory.mktemp("cli")
    box = _write(folder, "box.json", system_file)
    if config is not None:
        _write(folder, "mistralrs.toml", config)
    args = [box if a == "FILE" else a for a in args]
    result = _run(args, env, cwd=folder)
    _clean(result)
    assert result.exit_code in (0, 1, 2), (args, env, result.output[-2000:])
    if result.exit_code:
        assert result.output.strip(), (args, env)  # a failure always says why
    assert len(result.output) < 30_000  # nothing a user typed is echoed whole
    if "--json" in args and result.exit_code:
        data = json.loads(result.stdout)
        assert data["schema"] == ERROR_SCHEMA or "errors" in data or "sections" in data, data
