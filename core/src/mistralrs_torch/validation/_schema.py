"""Schemas for structured input (JSON files, TOML tables): checked here, published as JSON Schema.

A schema is a tree of the small frozen types below. :func:`problems` walks a
parsed value along it and returns every problem with the path of the field at
fault (``gpus[0].memory_free``); :func:`json_schema` writes the same tree as a
JSON Schema (draft 2020-12), so that the published schema and the check are one
definition. The check is never looser than the JSON Schema: where JSON Schema
would accept more (``8.0`` as an integer), the check refuses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mistralrs_torch.validation._text import did_you_mean, shown

#: Problems reported for one value before the rest are summarised.
_MAX_PROBLEMS = 20


# Plain classes, not dataclasses: a frozen dataclass costs about a millisecond to define, and start-up counts.
class Integer:
    """A JSON integer (not a boolean, not 8.0) in ``low..high``."""

    __slots__ = ("description", "high", "low")

    def __init__(self, low: int, high: int, description: str = "") -> None:
        self.low, self.high, self.description = low, high, description


class Text:
    """A string of at most ``max_length`` characters, matching ``pattern`` (a regex without anchors) if given.

    ``allows`` says in words what the pattern allows, for messages ("a lower-case name such as linux").
    """

    __slots__ = ("allows", "description", "max_length", "pattern")

    def __init__(self, max_length: int, pattern: str = "", allows: str = "", description: str = "") -> None:
        self.max_length, self.pattern, self.allows, self.description = max_length, pattern, allows, description


class Flag:
    """true or false."""

    __slots__ = ("description",)

    def __init__(self, description: str = "") -> None:
        self.description = description


class Const:
    """Exactly this string."""

    __slots__ = ("description", "value")

    def __init__(self, value: str, description: str = "") -> None:
        self.value, self.description = value, description


class Nullable:
    """null, or a value of ``inner``."""

    __slots__ = ("description", "inner")

    def __init__(self, inner: Schema, description: str = "") -> None:
        self.inner, self.description = inner, description


class ListOf:
    """An array of ``min_items``..``max_items`` values of ``item``."""

    __slots__ = ("description", "item", "max_items", "min_items")

    def __init__(self, item: Schema, max_items: int, min_items: int = 0, description: str = "") -> None:
        self.item, self.max_items, self.min_items, self.description = item, max_items, min_items, description


_NAME = Text(64, r"[A-Za-z0-9_.+-]+", "letters, digits, '_', '.', '+' and '-'")


class MapOf:
    """An object of at most ``max_items`` entries whose keys follow ``key`` and whose values follow ``value``."""

    __slots__ = ("description", "key", "max_items", "value")

    def __init__(self, value: Schema, max_items: int, key: Text = _NAME, description: str = "") -> None:
        self.value, self.max_items, self.key, self.description = value, max_items, key, description


class Record:
    """An object with these fields and no others; ``required`` ones must be present.

    ``unknown_hint`` is said after "is not a known field" when no known field is close.
    """

    __slots__ = ("description", "fields", "required", "unknown_hint")

    def __init__(self, fields: Mapping[str, Schema], required: tuple[str, ...] = (), description: str = "",
                 unknown_hint: str = "") -> None:
        self.fields, self.required, self.description, self.unknown_hint = fields, required, description, unknown_hint


class OneOf:
    """A value of any one of ``options``."""

    __slots__ = ("description", "options")

    def __init__(self, options: tuple[Schema, ...], description: str = "") -> None:
        self.options, self.description = options, description


Schema = Integer | Text | Flag | Const | Nullable | ListOf | MapOf | Record | OneOf


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else type(value).__name__


def _describe(schema: Schema) -> str:
    if isinstance(schema, Integer):
        return f"an integer from {schema.low} to {schema.high}"
    if isinstance(schema, Text):
        return f"a string ({schema.allows})" if schema.allows else "a string"
    if isinstance(schema, Flag):
        return "true or false"
    if isinstance(schema, Const):
        return repr(schema.value)
    if isinstance(schema, Nullable):
        return f"null or {_describe(schema.inner)}"
    if isinstance(schema, ListOf):
        count = f"exactly {schema.min_items}" if schema.min_items == schema.max_items else f"at most {schema.max_items}"
        return f"an array of {count} entries, each {_describe(schema.item)}"
    if isinstance(schema, (MapOf, Record)):
        return "an object"
    return " or ".join(_describe(option) for option in schema.options)


def _not(value: object, schema: Schema) -> str:
    return f"must be {_describe(schema)}, not {_kind(value)}" + (
        f" {shown(value)}" if value is not None and not isinstance(value, (list, dict)) else "")


class _Walk:
    def __init__(self) -> None:
        self.found: list[tuple[str, str]] = []

    def add(self, path: str, problem: str) -> None:
        self.found.append((path, problem))

    def full(self) -> bool:
        return len(self.found) >= _MAX_PROBLEMS

    def visit(self, schema: Schema, value: Any, path: str) -> None:
        if self.full():
            return
        if isinstance(schema, Nullable):
            if value is not None and _kind(value) != _kind_of(schema.inner):
                self.add(path, _not(value, schema))
            elif value is not None:
                self.visit(schema.inner, value, path)
            return
        if isinstance(schema, OneOf):
            for option in schema.options:
                trial = _Walk()
                trial.visit(option, value, path)
                if not trial.found:
                    return
            matching = [o for o in schema.options if _kind_of(o) == _kind(value)]
            if len(matching) == 1:  # the right kind, wrong content: say what is wrong inside it
                self.visit(matching[0], value, path)
            else:
                self.add(path, _not(value, schema))
            return
        if isinstance(schema, Integer):
            if isinstance(value, bool) or not isinstance(value, int):
                self.add(path, _not(value, schema))
            elif not schema.low <= value <= schema.high:
                self.add(path, f"is {shown(value)}, outside {schema.low}..{schema.high}")
        elif isinstance(schema, Text):
            self._text(schema, value, path)
        elif isinstance(schema, Flag):
            if not isinstance(value, bool):
                self.add(path, _not(value, schema))
        elif isinstance(schema, Const):
            if value != schema.value or not isinstance(value, str):
                self.add(path, f"is {shown(value)}, not {schema.value!r}")
        elif isinstance(schema, ListOf):
            self._list(schema, value, path)
        elif isinstance(schema, MapOf):
            self._map(schema, value, path)
        else:
            self._record(schema, value, path)

    def _text(self, schema: Text, value: Any, path: str) -> None:
        if not isinstance(value, str):
            self.add(path, _not(value, schema))
        elif len(value) > schema.max_length:
            self.add(path, f"is {len(value)} characters long, more than {schema.max_length}")
        elif schema.pattern and not _matches(schema.pattern, value):
            self.add(path, f"is {shown(value)}, which is not {schema.allows or 'allowed'}")

    def _list(self, schema: ListOf, value: Any, path: str) -> None:
        if not isinstance(value, (list, tuple)):  # tuples: snapshots built in Python, not read from a file
            self.add(path, _not(value, schema))
        elif not schema.min_items <= len(value) <= schema.max_items:
            self.add(path, f"has {len(value)} entries: it must have {_describe(schema).split(' of ', 1)[1]}")
        else:
            for i, item in enumerate(value):
                self.visit(schema.item, item, f"{path}[{i}]")

    def _map(self, schema: MapOf, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            self.add(path, _not(value, schema))
        elif len(value) > schema.max_items:
            self.add(path, f"has {len(value)} entries, more than {schema.max_items}")
        else:
            for key, item in value.items():
                if len(key) > schema.key.max_length or not _matches(schema.key.pattern, key):
                    self.add(f"{path}[{_field(key)}]", f"is not a valid name ({schema.key.allows}, at most "
                             f"{schema.key.max_length} characters)")
                else:
                    self.visit(schema.value, item, f"{path}.{key}" if path else key)

    def _record(self, schema: Record, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            self.add(path, _not(value, schema))
            return
        prefix = f"{path}." if path else ""
        for name in schema.required:
            if name not in value:
                self.add(f"{prefix}{name}", "is missing")
        for key, item in value.items():
            if key in schema.fields:
                self.visit(schema.fields[key], item, f"{prefix}{key}")
                continue
            close = did_you_mean(key, schema.fields)
            hint = f"did you mean {close!r}?" if close else \
                schema.unknown_hint or f"the fields are {', '.join(schema.fields)}"
            self.add(f"{prefix}{_field(key)}", f"is not a known field ({hint})")


def _kind_of(schema: Schema) -> str:
    kinds = {Integer: "an integer", Text: "a string", Flag: "a boolean", Const: "a string", ListOf: "an array",
             MapOf: "an object", Record: "an object"}
    return kinds.get(type(schema), "")


def _field(key: str) -> str:
    """A key as a field path shows it: bare when it is a plain name, quoted and cut short otherwise."""
    return key if len(key) <= 40 and key.replace("_", "a").replace("-", "a").isalnum() and key.isascii() \
        else shown(key, 40)


def _matches(pattern: str, text: str) -> bool:
    import re  # compiled patterns are cached by re itself

    return re.fullmatch(pattern, text) is not None


def problems(schema: Schema, value: Any, path: str = "") -> list[tuple[str, str]]:
    """Every (field path, problem) of ``value`` against ``schema`` (at most 20, then one that says more exist)."""
    walk = _Walk()
    walk.visit(schema, value, path)
    if walk.full():
        walk.found.append(("", "... (further problems not shown)"))
    return walk.found


def problem_lines(found: list[tuple[str, str]]) -> list[str]:
    """Problems as the lines of an error message: "  - gpus[0].index is -1, outside 0..1023"."""
    return [f"  - {field} {problem}" if field else f"  - {problem}" for field, problem in found]


def json_schema(schema: Schema) -> dict[str, Any]:
    """``schema`` as a JSON Schema (draft 2020-12) fragment."""
    out: dict[str, Any]
    if isinstance(schema, Integer):
        out = {"type": "integer", "minimum": schema.low, "maximum": schema.high}
    elif isinstance(schema, Text):
        out = {"type": "string", "maxLength": schema.max_length}
        if schema.pattern:
            out["pattern"] = f"^(?:{schema.pattern})$"
    elif isinstance(schema, Flag):
        out = {"type": "boolean"}
    elif isinstance(schema, Const):
        out = {"const": schema.value}
    elif isinstance(schema, Nullable):
        out = {"anyOf": [json_schema(schema.inner), {"type": "null"}]}
    elif isinstance(schema, OneOf):
        out = {"anyOf": [json_schema(option) for option in schema.options]}
    elif isinstance(schema, ListOf):
        out = {"type": "array", "items": json_schema(schema.item), "minItems": schema.min_items,
               "maxItems": schema.max_items}
    elif isinstance(schema, MapOf):
        out = {"type": "object", "maxProperties": schema.max_items, "propertyNames": json_schema(schema.key),
               "additionalProperties": json_schema(schema.value)}
    else:
        out = {"type": "object", "properties": {k: json_schema(v) for k, v in schema.fields.items()},
               "required": list(schema.required), "additionalProperties": False}
    if schema.description:
        out = {"description": schema.description, **out}
    return out
