"""The validation layer: every input that crosses into the program is checked here before it is used.

- :mod:`._values`: text values (environment variables, options): strict integers, seconds, booleans.
- :mod:`._documents`: JSON and TOML files, read with size, depth and number-length limits.
- :mod:`._schema`: schemas for structured input, checked field by field and published as JSON Schema.
- :mod:`._text`: user input shown back in messages, cut short; "did you mean".

Every failure is an :class:`~mistralrs_torch.InputError` (a ConfigError: exit status 1) that names the
input and the field, shows the value cut to a few dozen characters, and says what to write instead.
Nothing here imports torch, json or re until it is used; the schema types load on first use.
"""

from typing import TYPE_CHECKING

from mistralrs_torch.validation._documents import MAX_DEPTH, read_json, read_toml
from mistralrs_torch.validation._text import SHOWN, did_you_mean, shown
from mistralrs_torch.validation._values import (
    MAX_SECONDS,
    env_int,
    env_seconds,
    parse_flag,
    parse_int,
    parse_seconds,
)

if TYPE_CHECKING:
    from mistralrs_torch.validation._schema import (
        Const,
        Flag,
        Integer,
        ListOf,
        MapOf,
        Nullable,
        OneOf,
        Record,
        Schema,
        Text,
        json_schema,
        problem_lines,
        problems,
    )

#: Loaded on first use: every start-up reads environment variables, few read a structured file.
_SCHEMA_NAMES = ("Const", "Flag", "Integer", "ListOf", "MapOf", "Nullable", "OneOf", "Record", "Schema", "Text",
                 "json_schema", "problem_lines", "problems")


def __getattr__(name: str) -> object:
    if name in _SCHEMA_NAMES:
        from mistralrs_torch.validation import _schema

        return getattr(_schema, name)
    raise AttributeError(f"module 'mistralrs_torch.validation' has no attribute {name!r}")


__all__ = [
    "MAX_DEPTH",
    "MAX_SECONDS",
    "SHOWN",
    "Const",
    "Flag",
    "Integer",
    "ListOf",
    "MapOf",
    "Nullable",
    "OneOf",
    "Record",
    "Schema",
    "Text",
    "did_you_mean",
    "env_int",
    "env_seconds",
    "json_schema",
    "parse_flag",
    "parse_int",
    "parse_seconds",
    "problem_lines",
    "problems",
    "read_json",
    "read_toml",
    "shown",
]
