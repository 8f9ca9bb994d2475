"""`mistralrs doctor` / `plugins doctor` / `plugins resolve --explain` as a user runs them: subprocesses.

All runs start together in one module-scoped fixture and are awaited
together. Importing torch costs about 5 s of CPU here, so only `doctor` and
`plugins doctor --json` run as their own `python -m mistralrs_torch` processes; the
other torch-importing commands share one interpreter (see _IN_ONE_PROCESS).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest

from mistralrs_torch.doctor import SECTIONS
from mistralrs_torch.ops import OPS

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "docs" / "doctor.schema.json"
TIMEOUT = 180


@dataclass
class Done:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MISTRALRS_") and k not in ("RING_CONFIG", "PYTHONPATH")}
    env.update(extra or {})
    return env


class Batch:
    """Subprocesses started at once, collected by name."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.running: dict[str, tuple[subprocess.Popen[str], tuple[str, ...]]] = {}
        self.done: dict[str, Done] = {}

    def start(self, name: str, *args: str, env: Mapping[str, str] | None = None, code: str | None = None) -> None:
        command = [sys.executable, "-c", code] if code is not None else [sys.executable, "-m", "mistralrs_torch", *args]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=clean_env(env), cwd=self.cwd)
        self.running[name] = (process, tuple(args))

    def __getitem__(self, name: str) -> Done:
        if name not in self.done:
            process, args = self.running.pop(name)
            stdout, stderr = process.communicate(timeout=TIMEOUT)
            self.done[name] = Done(args, process.returncode, stdout, stderr)
        return self.done[name]

    def close(self) -> None:
        for process, _ in self.running.values():
            process.kill()
            process.communicate()


_NO_TORCH = """
import sys
from mistralrs_torch.cli import cli
try:
    cli({args!r}, standalone_mode=False)
    code = 0
except SystemExit as exc:
    code = exc.code or 0
print("\\nTORCH_IMPORTED=" + str("torch" in sys.modules))
print("EXIT=" + str(code))
"""

LIGHT_COMMANDS = {
    "doctor --no-verify": ["doctor", "--no-verify"],
    "plugins doctor --no-verify --json": ["plugins", "doctor", "--no-verify", "--json"],
    "doctor --system apple-m2": ["doctor", "--system", "apple-m2"],
    "plugins list": ["plugins", "list"],
    "plugins list --json": ["plugins", "list", "--json"],
    "plugins resolve": ["plugins", "resolve"],
    "plugins resolve --system h100 --json": ["plugins", "resolve", "--system", "h100", "--json"],
}

_BROKEN_DIST = "mrs_cli_broken_plugin"


def _install_broken_plugin(folder: Path) -> Path:
    """A broken plugin distribution 'installed' in its own sys.path folder (an entry point whose module fails)."""
    site = folder / "site"
    dist_info = site / f"{_BROKEN_DIST}-0.0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {_BROKEN_DIST}\nVersion: 0.0.1\n\n", encoding="utf-8"
    )
    (dist_info / "entry_points.txt").write_text(f"[mistralrs.plugins]\nbrokenplug = {_BROKEN_DIST}\n", encoding="utf-8")
    (site / f"{_BROKEN_DIST}.py").write_text(
        'raise ImportError("libfake.so: cannot open shared object file")\n', encoding="utf-8"
    )
    return site


#: Commands that import torch, run one after another in a single interpreter (torch imports once, about
#: 5 s here) through the same click entry point as the console script; stderr of "doctor tty" claims to be a
#: terminal, as it is when a user runs doctor interactively.
_IN_ONE_PROCESS = """
import contextlib, io, json, sys, traceback
from mistralrs_torch.cli import cli


class Terminal(io.StringIO):
    def isatty(self):
        return True


results = {}
for name, args, tty in JOBS:
    out, err = io.StringIO(), (Terminal() if tty else io.StringIO())
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli(args, prog_name="mistralrs")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = -1
    results[name] = {"returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
sys.__stdout__.write(json.dumps(results))
"""

SHARED_JOBS = [
    ("resolve --explain", ["plugins", "resolve", "--explain"], False),
    ("resolve --explain --system h100", ["plugins", "resolve", "--explain", "--system", "h100"], False),
    ("doctor tty", ["doctor"], True),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Batch]:
    cwd = tmp_path_factory.mktemp("doctor_cli")
    site = _install_broken_plugin(tmp_path_factory.mktemp("broken_plugin"))
    batch = Batch(cwd)
    # torch-importing runs first, so they overlap with everything else
    batch.start("doctor", "doctor")
    batch.start("plugins doctor --json", "plugins", "doctor", "--json")
    batch.start("shared", code=f"JOBS = {SHARED_JOBS!r}\n" + _IN_ONE_PROCESS)
    for name, args in LIGHT_COMMANDS.items():
        batch.start(f"no-torch {name}", code=textwrap.dedent(_NO_TORCH.format(args=args)))
    batch.start("doctor --system h100 --json", "doctor", "--system", "h100", "--json")
    batch.start("broken", "doctor", "--no-verify", env={"PYTHONPATH": str(site)})
    batch.start(
        "broken strict", "doctor", "--no-verify", env={"PYTHONPATH": str(site), "MISTRALRS_STRICT_PLUGINS": "1"}
    )
    batch.start("bad features", "doctor", "--features", "metal")
    batch.start("bad system", "doctor", "--system", "no-such-machine")
    try:
        yield batch
    finally:
        batch.close()


@pytest.fixture(scope="module")
def shared(runs: Batch) -> dict[str, Done]:
    done = runs["shared"]
    assert done.returncode == 0, done.stderr
    return {name: Done(tuple(args), **json.loads(done.stdout)[name]) for name, args, _ in SHARED_JOBS}


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def no_traceback(done: Done) -> None:
    assert "Traceback" not in done.stdout + done.stderr, done.stderr


# ---------------------------------------------------------------------------------------------


def test_doctor_exits_zero_and_shows_every_section(runs: Batch) -> None:
    done = runs["doctor"]
    assert done.returncode == 0, done.stdout + done.stderr
    for section in SECTIONS:
        assert f"\n{section.upper()}\n" in done.stdout
    assert "verified" in done.stdout and "failed" not in done.stdout
    assert "OK: 0 error(s)" in done.stdout
    no_traceback(done)


def test_piped_doctor_output_has_no_progress_characters(runs: Batch) -> None:
    done = runs["doctor"]
    assert "\r" not in done.stdout and "\r" not in done.stderr
    assert "\x1b" not in done.stdout and "\x1b" not in done.stderr
    assert "verifying" not in done.stderr


def test_doctor_on_a_terminal_shows_progress_on_stderr_only(shared: dict[str, Done]) -> None:
    done = shared["doctor tty"]
    assert done.returncode == 0
    assert "verifying" in done.stderr and "\r" in done.stderr
    # The report itself (stdout, piped here) stays clean, and the progress line is cleared at the end.
    assert "\r" not in done.stdout and "\x1b" not in done.stdout
    assert done.stderr.endswith("\r\x1b[K")


def test_plugins_doctor_json_validates_against_the_schema(runs: Batch, validator) -> None:
    done = runs["plugins doctor --json"]
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    validator.validate(data)
    assert data["ok"] is True and data["verification"]["note"] == ""
    results = data["verification"]["results"]
    assert results and all(r["result"] == "verified" for r in results)
    assert {r["op"] for r in results} == {op.name for op in OPS}


def test_doctor_and_plugins_doctor_are_the_same_command(runs: Batch) -> None:
    text, as_json = runs["doctor"], json.loads(runs["plugins doctor --json"].stdout)
    for section, checks in as_json["sections"].items():
        for check in checks:
            if section != "configuration" or check["name"] in ("selection", "device"):
                assert f"{check['name']}" in text.stdout


def test_doctor_for_a_profile_does_not_verify_and_exits_zero(runs: Batch) -> None:
    done = runs["no-torch doctor --system apple-m2"]
    assert done.stdout.rstrip().endswith("EXIT=0"), done.stdout + done.stderr
    assert "skipped: --system apple-m2 describes another machine" in done.stdout
    assert " verified" not in done.stdout
    assert "metal" in done.stdout


def test_doctor_profile_json_validates(runs: Batch, validator) -> None:
    done = runs["doctor --system h100 --json"]
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    validator.validate(data)
    assert data["system"] == "h100" and data["verification"]["results"] == []
    active = {c["name"] for c in data["sections"]["features"] if c["status"] == "ok"}
    assert "flash-attn-v3" in active


@pytest.mark.parametrize("name", list(LIGHT_COMMANDS))
def test_light_commands_do_not_import_torch(runs: Batch, name: str) -> None:
    done = runs[f"no-torch {name}"]
    lines = done.stdout.rstrip().splitlines()
    assert lines[-1] == "EXIT=0", done.stdout + done.stderr
    assert lines[-2] == "TORCH_IMPORTED=False", f"`mistralrs {name}` imported torch"


def test_no_verify_json_is_valid_and_says_why(runs: Batch, validator) -> None:
    done = runs["no-torch plugins doctor --no-verify --json"]
    data = json.loads(done.stdout[: done.stdout.rindex("\nTORCH_IMPORTED")])
    validator.validate(data)
    assert data["verification"] == {"note": "skipped (--no-verify)", "results": []}


def test_resolve_explain_shows_a_winner_per_op(shared: dict[str, Done]) -> None:
    done = shared["resolve --explain"]
    assert done.returncode == 0, done.stderr
    explain = done.stdout[done.stdout.index("\nexplain:\n") :]
    for op in (op.name for op in OPS):
        (line,) = [line for line in explain.splitlines() if line.startswith(f"{op} (")]
        winner = line.rsplit(": ", 1)[1]
        assert winner and winner != "NO BACKEND", line
    assert "attention (float32 on cpu, head size 128, mask causal): cpu-attention" in explain
    assert "paged attention off (opt-in: --paged-attn or MISTRALRS_PAGED_ATTN=1)" in explain
    assert "skipped metal: feature unavailable" in explain
    assert "fallbacks: none recorded" in explain
    no_traceback(done)


def test_resolve_explain_with_a_profile_is_a_clear_error(shared: dict[str, Done]) -> None:
    done = shared["resolve --explain --system h100"]
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and "--explain" in done.stderr and "--system" in done.stderr
    assert done.stdout == ""
    no_traceback(done)


def test_installed_broken_plugin_is_reported_and_doctor_still_runs(runs: Batch) -> None:
    done = runs["broken"]
    assert done.returncode == 0, done.stdout + done.stderr
    plugins = done.stdout[done.stdout.index("\nPLUGINS\n") : done.stdout.index("\nFEATURES\n")]
    (line,) = [line for line in plugins.splitlines() if "brokenplug" in line and "broken at" in line]
    assert line.lstrip().startswith("!!") and "libfake.so" in line and _BROKEN_DIST in line
    assert "MISTRALRS_DISABLE_PLUGINS=brokenplug" in plugins
    assert "builtin" in plugins and "mistralrs-torch-cuda" in plugins  # the healthy ones are still there
    no_traceback(done)


def test_installed_broken_plugin_fails_doctor_under_strict_plugins(runs: Batch) -> None:
    done = runs["broken strict"]
    assert done.returncode == 1
    plugins = done.stdout[done.stdout.index("\nPLUGINS\n") : done.stdout.index("\nFEATURES\n")]
    assert any(line.lstrip().startswith("XX brokenplug") for line in plugins.splitlines())
    assert "PROBLEMS" in done.stdout
    no_traceback(done)


def test_invalid_selection_exits_one_with_the_fix(runs: Batch) -> None:
    done = runs["bad features"]
    assert done.returncode == 1
    assert "metal is macOS-only" in done.stdout and "remove the metal feature" in done.stdout
    no_traceback(done)


def test_unknown_profile_is_a_usage_error(runs: Batch) -> None:
    done = runs["bad system"]
    assert done.returncode == 2
    assert "no-such-machine" in done.stderr
    no_traceback(done)
