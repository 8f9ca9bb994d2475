"""The ``mistralrs`` command line: ``mistralrs plugins list|resolve|system``.

Exit status: 0 on success, 1 when the requested feature set is invalid, a
configuration is malformed or a strict-mode plugin is broken, 2 on usage
errors. Errors print as one message with its fix, never a traceback.
"""

from __future__ import annotations

import faulthandler
import os
import sys
from collections.abc import Sequence
from typing import Any

import click

from mistralrs_torch._errors import MistralrsError, SelectionError, SystemProfileError
from mistralrs_torch._version import __version__
from mistralrs_torch.cli import _render
from mistralrs_torch.cli._launch import launch_command
from mistralrs_torch.cli._options import features_option
from mistralrs_torch.cli._run import run_command
from mistralrs_torch.cli._serve import serve_command
from mistralrs_torch.cli._tune import tune_command
from mistralrs_torch.features import BrokenPlugin
from mistralrs_torch.plugins import PluginManager
from mistralrs_torch.resolution import Resolution, read_selection, resolve
from mistralrs_torch.system import PROFILE_NAMES, SystemSnapshot, load_system
from mistralrs_torch.validation import env_flag, shown

ERROR_SCHEMA = "mistralrs.error/1"


class _Failure(click.ClickException):
    exit_code = 1

    def __init__(self, message: str, kind: str = "MistralrsError") -> None:
        super().__init__(message)
        self.kind = kind

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MistralrsError as exc:
            raise _Failure(str(exc), type(exc).__name__) from None


def _wants_json(argv: list[str]) -> bool:
    """Whether ``--json`` was asked for (before a ``--``, after which the words belong to a launched command)."""
    return "--json" in (argv[:argv.index("--")] if "--" in argv else argv)


def _fail(exc: click.ClickException, as_json: bool) -> None:
    """Report an error as text (usage errors with click's usage line) or as a JSON error object; then exit."""
    if as_json:
        _print_json({"schema": ERROR_SCHEMA, "mistralrs": __version__,
                     "error": {"type": getattr(exc, "kind", type(exc).__name__), "message": exc.format_message(),
                               "exit_code": exc.exit_code}})
    else:
        exc.show()
    sys.exit(exc.exit_code)


class _RootGroup(_Group):
    """The top-level group: built-in commands, then commands plugins add (mistralrs_cli_commands).

    Every error leaves through :meth:`main`: exit status 1 for a malformed configuration or another
    MistralrsError, 2 for usage, as one message (or, with ``--json``, one JSON error object), never a
    traceback.
    """

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        as_json = _wants_json(argv)
        try:
            result = super().main(argv, prog_name, complete_var, False, **extra)
        except click.ClickException as exc:
            _fail(exc, as_json)
        except MistralrsError as exc:  # raised outside a command: --help listing plugin commands, parsing
            _fail(_Failure(str(exc), type(exc).__name__), as_json)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)

    def _plugin_commands(self) -> dict[str, click.Command]:
        manager = PluginManager(environ=os.environ, strict=False)
        commands: dict[str, click.Command] = {}

        def valid(r: object) -> bool:
            return isinstance(r, (list, tuple)) and all(isinstance(c, click.Command) for c in r)

        for _, result in manager.call_each("mistralrs_cli_commands", valid):
            commands.update({c.name: c for c in result if c.name and c.name not in self.commands})
        return commands

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or self._plugin_commands().get(cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self._plugin_commands()])


class _SystemParam(click.ParamType):
    name = "FILE_OR_NAME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> SystemSnapshot:
        if isinstance(value, SystemSnapshot):
            return value
        try:
            return load_system(value)
        except SystemProfileError as exc:
            # A malformed snapshot is a malformed configuration (exit status 1, reported by the group);
            # a value naming neither a profile nor a file is a usage error (exit status 2).
            if value in PROFILE_NAMES or os.path.isfile(value):
                raise
            self.fail(str(exc), param, ctx)


_system_option = click.option(
    "--system", "system", type=_SystemParam(), default=None,
    help=f"Evaluate another machine: a profile ({', '.join(PROFILE_NAMES)}) "
    "or a JSON file from `plugins system --json`.")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON with a versioned schema.")


def _traceback_option(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        os.environ["MISTRALRS_TRACEBACK"] = "1"  # this process's own setting: every command below reads it


@click.group(cls=_RootGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mistralrs")
@click.option("--traceback", is_flag=True, expose_value=False, is_eager=True, callback=_traceback_option,
              help="Show a broken plugin's own traceback (also MISTRALRS_TRACEBACK=1).")
def cli() -> None:
    """mistralrs: pluggable hardware backends for LLM inference."""


def _echo_tracebacks(broken: Sequence[BrokenPlugin]) -> None:
    """The plugins' own tracebacks on stderr, with --traceback or MISTRALRS_TRACEBACK=1."""
    if not env_flag(os.environ, "MISTRALRS_TRACEBACK"):
        return
    for b in broken:
        click.echo(f"\ntraceback of plugin {b.plugin.name} ({b.plugin.distribution}) at {b.stage}:\n"
                   f"{b.traceback.rstrip() or '(no exception was raised: ' + b.error + ')'}", err=True)


@cli.group(cls=_Group)
def plugins() -> None:
    """Inspect installed backend plugins and the features they provide."""


def _resolve(features: str | None, system: SystemSnapshot | None) -> tuple[PluginManager, Resolution]:
    manager = PluginManager(environ=os.environ)
    snapshot = system if system is not None else manager.probe_system()
    selection = read_selection(features, os.environ)
    return manager, resolve(manager.features, manager.broken, selection, snapshot, os.environ)


def _bound(manager: PluginManager, resolution: Resolution, paged_attn: bool) -> tuple[Resolution, dict[str, Any]]:
    """Bind a runtime (imports torch): plugins whose backend hooks fail now are broken; resolve again to show it."""
    from mistralrs_torch.runtime import Runtime

    runtime = Runtime(resolution, manager, paged_attention=paged_attn or None, environ=os.environ)
    again = resolve(manager.features, manager.broken, resolution.selection, resolution.system, os.environ)
    return again, runtime.explain()


def _print_json(data: dict[str, Any]) -> None:
    import json

    click.echo(json.dumps(data, indent=2))


@plugins.command("list")
@_system_option
@features_option
@_json_option
@click.option("--bind", is_flag=True,
              help="Also bind the active features' backends (imports torch), so a plugin whose backend hook fails "
                   "shows as broken; without it, list stays light and runs no backend hook.")
def list_command(system: SystemSnapshot | None, features: str | None, as_json: bool, bind: bool) -> None:
    """List every installed feature with its status (active, available, unavailable, broken) and why."""
    manager, resolution = _resolve(features, system)
    if bind:
        if system is not None:
            raise _Failure("--bind binds backends on this machine; it cannot be combined with --system")
        resolution, _ = _bound(manager, resolution, False)
    if as_json:
        _print_json(_render.list_json(resolution, manager))
    else:
        click.echo(_render.list_text(resolution, manager))
    _echo_tracebacks(manager.broken)


@plugins.command("resolve")
@features_option
@_system_option
@_json_option
@click.option("--explain", is_flag=True,
              help="Also bind the ops (imports torch) and show, per op, the winning backend, the runners-up and why "
                   "each other was skipped.")
@click.option("--paged-attn", is_flag=True, help="With --explain: opt in to paged attention where it is opt-in.")
def resolve_command(features: str | None, system: SystemSnapshot | None, as_json: bool, explain: bool,
                    paged_attn: bool) -> None:
    """Show the active feature set and why, or every rule the selection breaks with its fix."""
    try:
        manager, resolution = _resolve(features, system)
    except SelectionError as exc:
        if not as_json:
            raise
        _print_json({"schema": _render.RESOLVE_SCHEMA, "mistralrs": __version__, "selection": {"source": exc.source},
                     "active": [], "features": [],
                     "errors": [{"feature": v.subject, "rule": v.rule, "message": v.message, "fix": v.fix}
                                for v in exc.violations]})
        sys.exit(1)
    explanation = None
    if explain:
        if system is not None:
            raise _Failure("--explain binds backends on this machine; it cannot be combined with --system")
        resolution, explanation = _bound(manager, resolution, paged_attn)
    if as_json:
        _print_json({**_render.resolve_json(resolution), **({"explain": explanation} if explanation else {})})
    else:
        click.echo(_render.resolve_text(resolution))
        if explanation:
            from mistralrs_torch.runtime import explain_text

            click.echo("\nexplain:\n" + explain_text(explanation))
    _echo_tracebacks(manager.broken)


def _doctor(system: SystemSnapshot | None, features: str | None, as_json: bool, verify: bool, paged_attn: bool) -> None:
    from mistralrs_torch.doctor import run_doctor

    progress = _progress if sys.stderr.isatty() and not as_json else (lambda _: None)
    report = run_doctor(features=features, system=system, verify=verify, paged_attention=paged_attn or None,
                        progress=progress)
    if progress is _progress:
        click.echo("\r\033[K", err=True, nl=False)
    if as_json:
        _print_json(report.to_json())
    else:
        click.echo(report.to_text())
    _echo_tracebacks(report.broken)
    sys.exit(report.exit_code)


def _progress(message: str) -> None:
    click.echo(f"\r\033[K{message}", err=True, nl=False)


_doctor_options = [
    _system_option, features_option, _json_option,
    click.option("--verify/--no-verify", default=True,
                 help="Run each bound backend against a float64 reference (default on)."),
    click.option("--paged-attn", is_flag=True,
                 help="Opt in to paged attention on devices where it is opt-in (`plugins matrix` shows which)."),
]


def _with_options(function: Any) -> Any:
    for option in reversed(_doctor_options):
        function = option(function)
    return function


@plugins.command("doctor")
@_with_options
def plugins_doctor_command(system: SystemSnapshot | None, features: str | None, as_json: bool, verify: bool,
                           paged_attn: bool) -> None:
    """Diagnose this machine: system, accelerators, libraries, plugins, features, configuration,
    recommendation, and verification of every bound backend. Exit 1 when anything is an error."""
    _doctor(system, features, as_json, verify, paged_attn)


@cli.command("doctor")
@_with_options
def doctor_command(system: SystemSnapshot | None, features: str | None, as_json: bool, verify: bool,
                   paged_attn: bool) -> None:
    """Alias of `mistralrs plugins doctor`."""
    _doctor(system, features, as_json, verify, paged_attn)


@plugins.command("test")
@click.argument("name")
@click.option("--features", "features", default=None, metavar="FEATURES",
              help="Only these features of the plugin (default: all of them), each forced active on its own.")
@click.option("-v", "--verbose", is_flag=True, help="Also print every case, not only one line per backend and op.")
@_json_option
def test_command(name: str, features: str | None, verbose: bool, as_json: bool) -> None:
    """Run the conformance kit on the installed plugin NAME (its entry-point name, as `plugins list` shows).

    Checks the plugin contract, then forces each feature of the plugin active (explicitly selected with what it
    requires, whatever auto mode would pick) and runs every backend it returns on every case of every op it
    implements: each call it claims must match the float64 reference, each call it refuses must say why.
    Ends with a verdict: passed (exit 0), failed (exit 1), or skipped (exit 5: only static checks could run here,
    no backend code ran)."""
    from mistralrs_torch.testing import run_kit

    chosen = tuple(f for f in (features or "").replace(",", " ").split() if f)
    report = run_kit(name, chosen or None, os.environ)
    if as_json:
        _print_json({"schema": "mistralrs.plugins.test/2", "plugin": shown(name), "features": list(report.features),
                     "verdict": report.verdict, "counts": report.counts(),
                     "results": [{"check": r.check, "status": r.status, "detail": r.detail, "ran": r.ran,
                                  "cases": [{"case": c.case, "dtype": c.dtype, "device": c.device,
                                             "status": c.status, "max_error": c.max_error,
                                             "rms_error": c.rms_error, "detail": c.detail} for c in r.cases]}
                                 for r in report.results]})
    else:
        for r in report.results:
            click.echo(f"{r.status.upper():8s} {r.check}" + (f": {r.detail}" if r.detail else ""))
            if verbose:
                for c in r.cases:
                    error = f"max {c.max_error:.1e} rms {c.rms_error:.1e}" if c.max_error is not None else c.detail
                    click.echo(f"    {c.status:8s} {c.dtype:8s} {c.device:6s} {c.case}: {error}")
        counts = report.counts()
        click.echo(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
        click.echo(f"verdict: {report.verdict}")
    sys.exit(report.exit_code)


@plugins.command("matrix")
@click.option("--markdown", is_flag=True, help="Print the Markdown table (the only format for now).")
def matrix_command(markdown: bool) -> None:
    """The support matrix of the installed features: platforms, hardware, ops, requirements and exclusions."""
    from mistralrs_torch.reference import support_matrix_markdown

    click.echo(support_matrix_markdown(PluginManager(environ=os.environ).features), nl=False)


@plugins.command("reference")
def reference_command() -> None:
    """The features reference (docs/features.md) for the installed features, as Markdown."""
    from mistralrs_torch.reference import features_reference_markdown

    click.echo(features_reference_markdown(PluginManager(environ=os.environ).features), nl=False)


@plugins.command("api-reference")
def api_reference_command() -> None:
    """The plugin API reference for plugin authors (docs/plugin-api.md), as Markdown: hooks, ops, CallSpec,
    tolerances and every manifest field, from the code."""
    from mistralrs_torch.reference import plugin_api_markdown

    click.echo(plugin_api_markdown(), nl=False)


@plugins.command("system")
@_system_option
@_json_option
@click.option("--schema", is_flag=True, help="Print the JSON Schema of snapshot files (docs/system.schema.json).")
def system_command(system: SystemSnapshot | None, as_json: bool, schema: bool) -> None:
    """Show the system snapshot resolution uses (save it with --json to evaluate this machine elsewhere)."""
    if schema:
        from mistralrs_torch.system import snapshot_json_schema

        _print_json(snapshot_json_schema())
        return
    snapshot = system if system is not None else PluginManager(environ=os.environ).probe_system()
    if as_json:
        click.echo(snapshot.dumps())
    else:
        click.echo(_render.system_text(snapshot))


cli.add_command(launch_command)
cli.add_command(run_command)
cli.add_command(serve_command)
cli.add_command(tune_command)


def main() -> None:
    """Console-script entry point."""
    # A plugin whose native code crashes the interpreter (segfault at import) cannot be quarantined: at
    # least the dying process prints the Python stack, which names the plugin module being imported.
    if not faulthandler.is_enabled():
        faulthandler.enable()
    cli(prog_name="mistralrs")
