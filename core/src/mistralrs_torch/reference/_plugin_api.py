"""docs/plugin-api.md: the plugin API reference, generated from the code's own data.

Hooks from their specs, the backend contract from the op contract's docstring,
every op from the op registry, CallSpec's fields from ``CALLSPEC_FIELDS``, the
tolerances from the verification engine, and every manifest field from its
``doc`` metadata: nothing here restates what the code defines, so the reference
cannot drift from it (a test compares the checked-in file with this output).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from mistralrs_torch import _hookspecs
from mistralrs_torch._version import PLUGIN_API_VERSION
from mistralrs_torch.features import (
    AutoCondition,
    ConfigField,
    EnvVar,
    FeatureManifest,
    GPURequirement,
    LibraryRequirement,
    ModuleRequirement,
    catalogue,
)
from mistralrs_torch.ops import (
    BACKEND_KINDS,
    BACKEND_PROTOCOLS,
    OPS,
    CallSpec,
    OpSpec,
    _contract,
    _signatures,
    op_methods,
)
from mistralrs_torch.system import HARDWARE_CLASSES

_INTRO = f"""# Plugin API reference

Plugin API {PLUGIN_API_VERSION}. This reference is generated from the code by
`mistralrs plugins api-reference` (a test fails when it drifts): the hooks from
their specifications, the ops from the op registry, the fields of `CallSpec` and
of the feature manifest from their documentation in the code, the tolerances
from the verification engine. [writing-a-plugin.md](writing-a-plugin.md) is the
tutorial; its section [Migrating from plugin API 1.x](writing-a-plugin.md#migrating-from-plugin-api-1x)
lists what changed in 2.0.
"""

_MANIFEST_TYPES = (FeatureManifest, GPURequirement, LibraryRequirement, ModuleRequirement, EnvVar, ConfigField,
                   AutoCondition)


def _markdown(text: str) -> str:
    """reStructuredText markup of the docstrings as Markdown: ``x`` and :role:`x` become `x` (~a.b.c: `c`)."""
    text = re.sub(r":\w+:`(~?)([^`]+)`", lambda m: f"`{m.group(2).split('.')[-1] if m.group(1) else m.group(2)}`", text)
    return text.replace("``", "`")


def _body(module: ModuleType) -> str:
    """A module's docstring without its summary line."""
    return _markdown((inspect.getdoc(module) or "").partition("\n\n")[2])


def _first_line(function: Callable[..., Any]) -> str:
    return _markdown((inspect.getdoc(function) or "").splitlines()[0])


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)]


def _signature(function: Callable[..., Any], name: str) -> str:
    """``name(a: T, *, b: U = 1) -> R`` with the annotations as written (they are strings here)."""
    parts: list[str] = []
    star = False
    for p in inspect.signature(function).parameters.values():
        if p.name == "self":
            continue
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        text = p.name + (f": {p.annotation}" if p.annotation is not p.empty else "")
        parts.append(text + (f" = {p.default!r}" if p.default is not p.empty else ""))
    returns = inspect.signature(function).return_annotation
    return f"{name}({', '.join(parts)})" + (f" -> {returns}" if returns is not inspect.Signature.empty else "")


def _value(value: object) -> str:
    """A default or allowed value as code: strings in double quotes, a default-constructed dataclass by its name."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and value == type(value)():
        return f"`{type(value).__name__}()`"
    return f'`"{value}"`' if isinstance(value, str) else f"`{value!r}`"


def _default(f: dataclasses.Field[Any]) -> str:
    if f.default_factory is not dataclasses.MISSING:
        return _value(f.default_factory())
    return "required" if f.default is dataclasses.MISSING else _value(f.default)


def _hooks() -> list[str]:
    lines = ["## Hooks", "", _body(_hookspecs), "",
             "Every hook a plugin can implement (`mistralrs_torch.hookimpl`), its parameters, what it returns, "
             "and the first line of its contract (the whole contract is its docstring in "
             "`mistralrs_torch._hookspecs`):", ""]
    for name, function in vars(_hookspecs).items():
        if name.startswith("mistralrs_") and callable(function):
            lines.append(f"- `{_signature(function, name)}`: {_first_line(function)}")
    return lines


def _backends() -> list[str]:
    lines = ["## Backends", "", _body(_contract), "", "The kinds of backend, the hook that returns each, and its ops:",
             ""]
    rows = [(f"`{kind}`", f"`{hook}`", f"`{BACKEND_PROTOCOLS[kind].__name__}`",
             ", ".join(f"`{op}`" for op in op_methods(BACKEND_PROTOCOLS[kind])))
            for kind, hook in BACKEND_KINDS.items()]
    lines += _table(["kind (`provides`)", "hook", "protocol", "ops (methods)"], rows)
    lines += ["", "### CallSpec", "", _markdown(inspect.getdoc(CallSpec) or ""), ""]
    defaults, types = CallSpec._field_defaults, typing.get_type_hints(CallSpec)
    rows = [(f"`{name}`", f"`{types[name].__name__}`", _value(defaults[name]) if name in defaults else "required",
             _contract.CALLSPEC_FIELDS[name]) for name in CallSpec._fields]
    return lines + _table(["field", "type", "default", "meaning"], rows)


def _op(op: OpSpec) -> list[str]:
    protocol = BACKEND_PROTOCOLS[op.kind]
    method = getattr(protocol, op.name)
    parameters = [p for p in inspect.signature(method).parameters if p != "self"]
    cases = list(op.load_cases()())
    lines = [f"### {op.name}", "", f"{op.summary[:1].upper()}{op.summary[1:]}.", "",
             f"- Kind `{op.kind}`: backends come from `{BACKEND_KINDS[op.kind]}`; the backend method is "
             f"`{protocol.__name__}.{_signature(method, op.name)}`.",
             "- CallSpec fields of its calls: " + ", ".join(f"`{f}`" for f in ("op", "dtype", "device", *op.signature))
             + " (the others keep their defaults).",
             "- Result: " + (f"written in place into {', '.join(f'`{parameters[i]}`' for i in op.writes)}; the "
                             "method returns None." if op.writes else "returned (new tensors).")]
    if op.prepare:
        lines.append(f"- Weights are prepared once, at load: `{protocol.__name__}."
                     f"{_signature(getattr(protocol, op.prepare), op.prepare)}` returns the backend's own layout, "
                     f"which the op then receives wrapped in a `PreparedWeight`.")
    lines += [f"- Verified against `{op.reference.partition(':')[2]}` (`mistralrs_torch.testing.references`) on "
              f"{len(cases)} cases in every dtype, {sum(c.smoke for c in cases)} of them doctor's smoke cases:",
              "", *(f"  - `{c.name}`" for c in cases), "", "```text", op.contract, "```"]
    return lines


def _ops() -> list[str]:
    lines = ["## Ops", "", "Every op of the registry (`mistralrs_torch.ops.OPS`). The runtime exposes each as "
             "`runtime.<op>(...)` with the arguments below; a backend implements it as a method of the same name.",
             "", "Before a backend sees a call, the runtime checks its arguments against the op's contract "
             "(`mistralrs_torch.ops._signatures`):", "", _body(_signatures), ""]
    lines += _table(["op", "kind", "summary"], [(f"[`{op.name}`](#{op.name})", f"`{op.kind}`",
                                                  op.summary) for op in OPS])
    for op in OPS:
        lines += ["", *_op(op)]
    return lines


def _verification() -> list[str]:
    from mistralrs_torch.testing import _kit, _verify

    lines = ["## Verification", "", _body(_verify), "", "Tolerances per dtype (`mistralrs_torch.testing.TOLERANCES`):",
             ""]
    lines += _table(["dtype", "max error", "rms error"], [(f"`{dtype}`", f"{t.max_error:g}", f"{t.rms_error:g}")
                                                          for dtype, t in _verify.TOLERANCES.items()])
    lines += ["", "## The conformance kit", "", _body(_kit), "", "Its contract checks "
              "(`mistralrs_torch.testing.CONTRACT_CHECKS`), in order:", ""]
    from mistralrs_torch.testing import CONTRACT_CHECKS

    lines += [f"- `{check.__name__}`" + (f": {_first_line(check)}" if check.__doc__ else "")
              for check in CONTRACT_CHECKS]
    lines += ["", "Verdict and exit status of `mistralrs plugins test NAME`:", ""]
    lines += _table(["verdict", "exit status"], [(f"`{v}`", str(code)) for v, code in _kit.VERDICT_EXIT_CODES.items()])
    return lines


def _manifest() -> list[str]:
    lines = ["## Feature manifest", "", "`FeatureManifest` and the requirement types it holds, all frozen dataclasses "
             "importable from `mistralrs_torch`. A malformed manifest raises `ManifestError` when it is built."]
    for kind in _MANIFEST_TYPES:
        lines += ["", f"### {kind.__name__}", "", _markdown((inspect.getdoc(kind) or "").split("\n\n")[0]), ""]
        rows = []
        for f in dataclasses.fields(kind):
            choices = f.metadata["choices"]
            meaning = f.metadata["doc"] + (f" Values: {', '.join(_value(c) for c in choices)}." if choices else "")
            rows.append((f"`{f.name}`", f"`{f.type}`", _default(f), _markdown(meaning)))
        lines += _table(["field", "type", "default", "meaning"], rows)
    lines += ["", "Hardware classes `recommended_for` takes (`mistralrs_torch.system.HARDWARE_CLASSES`):", ""]
    labels = {row.hardware_class: row.label for row in catalogue().rows}  # the seed's table, as the catalogue holds it
    lines += _table(["class", "hardware"], [(f"`{name}`", labels[name]) for name in HARDWARE_CLASSES])
    return lines


def plugin_api_markdown() -> str:
    """The plugin API reference as Markdown (imports torch: the verification cases are built to count them)."""
    sections = [_INTRO, *_hooks(), "", *_backends(), "", *_ops(), "", *_verification(), "", *_manifest(), ""]
    return "\n".join(sections)
