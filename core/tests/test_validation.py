"""The validation layer on its own: strict text values, bounded file readers, schemas, short echoes.

Every refusal is an InputError (a ConfigError) naming the input; nothing else escapes, whatever the text.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mistralrs_torch import ConfigError, InputError
from mistralrs_torch.validation import (
    Integer,
    ListOf,
    Nullable,
    Record,
    Text,
    env_int,
    json_schema,
    parse_flag,
    parse_int,
    parse_seconds,
    problems,
    read_json,
    read_toml,
    shown,
)

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)


@pytest.mark.parametrize("raw", ["\u00b2", "\u0661\u0662", "1_0", "0x10", "1e3", "", "  ", "3.0", "--1", "\U0001d7d9"])
def test_only_ascii_digits_make_an_integer(raw: str) -> None:
    with pytest.raises(InputError) as raised:
        parse_int(raw, "LOCAL_RANK", 0, 100, "this process's index")
    assert str(raised.value).startswith("LOCAL_RANK=") and "not an integer (ASCII digits 0-9)" in str(raised.value)


def test_integers_are_bounded_and_say_the_range() -> None:
    assert parse_int(" +7 ", "X", 0, 10, "x") == 7
    for raw in ("11", "-1", "9" * 5000):
        with pytest.raises(InputError, match=r"is outside 0\.\.10: set it to x"):
            parse_int(raw, "X", 0, 10, "x")
    assert env_int({}, "X", 0, 10, "x", default=3) == 3 and env_int({"X": " "}, "X", 0, 10, "x") is None


@PROPERTY
@given(raw=st.text(max_size=30))
def test_any_text_is_an_integer_in_range_or_an_input_error_naming_the_variable(raw: str) -> None:
    try:
        value = parse_int(raw, "WORLD_SIZE", 1, 1 << 20, "the number of processes")
    except InputError as exc:
        assert str(exc).startswith("WORLD_SIZE") and len(str(exc)) < 300
        return
    assert 1 <= value <= 1 << 20 and raw.strip().lstrip("+").isascii()


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "1e308", "1e999", "0", "-1", "never", "1_0", "\u0661", "604801"])
def test_seconds_are_finite_positive_and_at_most_a_week(raw: str) -> None:
    with pytest.raises(InputError, match="is not a number of seconds > 0 and <= 604800"):
        parse_seconds(raw, "MISTRALRS_COLLECTIVE_TIMEOUT")


@PROPERTY
@given(raw=st.one_of(st.text(max_size=20), st.floats().map(repr)))
def test_any_text_is_a_number_of_seconds_or_an_input_error(raw: str) -> None:
    try:
        value = parse_seconds(raw, "--grace", 3600)
    except InputError as exc:
        assert str(exc).startswith("--grace ")
        return
    assert math.isfinite(value) and 0 < value <= 3600


def test_flags_and_their_refusal() -> None:
    assert parse_flag(" YES ", "F") is True and parse_flag("", "F") is False
    with pytest.raises(InputError, match="F='maybe' is not a boolean: set F=1 or F=0"):
        parse_flag("maybe", "F")


def test_echoed_values_are_cut_short() -> None:
    assert shown("x" * 5_000_000) == repr("x" * 60) + "... (5000000 characters)"
    assert shown(int("9" * 4000)) in ("an integer of about 4000 digits", "an integer of about 4001 digits")
    assert len(shown([[["deep"] * 100] * 100] * 100)) < 200


def _write(tmp_path: Path, text: str | bytes, name: str = "f.json") -> str:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


@pytest.mark.parametrize(("text", "words"), [
    ("[" * 5000 + "]" * 5000, "nests arrays or objects more than 32 deep"),
    ('{"a": ' + "9" * 5000 + "}", "a number too long to read"),
    ('{"a": 1, "a": 2}', "has the key 'a' more than once"),
    ('{"a": NaN}', "holds NaN, which is not a JSON number"),
    ('{"a": 1,}', "is not valid JSON (line 1"),
    ("  ", "is empty"),
    (b"\xff{}", "is not UTF-8"),
])
def test_json_files_are_read_with_limits(tmp_path: Path, text: str | bytes, words: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(InputError) as raised:
        read_json(path, "a test file", max_bytes=1 << 20, fix="fix it")
    assert raised.value.source == path and words in raised.value.problem and raised.value.fix


def test_a_huge_json_file_is_refused_unread_and_fast(tmp_path: Path) -> None:
    path = _write(tmp_path, json.dumps({"gpus": [{"index": 0, "name": "x" * 100}] * 200_000}))
    started = time.monotonic()
    with pytest.raises(InputError, match="is over 1 MiB"):
        read_json(path, "a system snapshot", max_bytes=1 << 20, fix="")
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(("text", "words"), [
    ("a = " + "[" * 3000 + "]" * 3000, "nests arrays or tables too deeply"),
    ("a = " + "{b=" * 3000 + "1" + "}" * 3000, "nests arrays or tables too deeply"),
    ("a = " + "9" * 5000, "a number too long to read"),
    (".".join(["k"] * 30000) + " = 1", "a key of more than 64 dotted parts"),
    ("[" + ".".join(["t"] * 30000) + "]", "a key of more than 64 dotted parts"),
    ("features = [", "is not valid TOML"),
])
def test_toml_files_are_read_with_limits_and_quickly(tmp_path: Path, text: str, words: str) -> None:
    path = _write(tmp_path, text, "mistralrs.toml")
    started = time.monotonic()
    with pytest.raises(InputError) as raised:
        read_toml(path, "a configuration file", max_bytes=1 << 20, fix="fix it")
    assert words in str(raised.value) and path in str(raised.value)
    assert time.monotonic() - started < 2.0  # tomllib alone takes 20 s on the 30000-part key


_RECORD = Record({"count": Integer(0, 10), "name": Text(8, "[a-z]+", "lower-case letters"),
                  "tags": ListOf(Text(4), 2), "size": Nullable(Integer(0, 5))}, required=("count",))


@pytest.mark.parametrize(("value", "expected"), [
    ({"count": 3}, []),
    ({}, [("count", "is missing")]),
    ({"count": 11}, [("count", "is 11, outside 0..10")]),
    ({"count": True}, [("count", "must be an integer from 0 to 10, not a boolean True")]),
    ({"count": 1.0}, [("count", "must be an integer from 0 to 10, not a number 1.0")]),
    ({"count": 1, "name": "ABC"}, [("name", "is 'ABC', which is not lower-case letters")]),
    ({"count": 1, "tags": "ab"}, [("tags", "must be an array of at most 2 entries, each a string, not a string 'ab'")]),
    ({"count": 1, "tags": ["a", "b", "c"]}, [("tags", "has 3 entries: it must have at most 2 entries, each a string")]),
    ({"count": 1, "size": "big"}, [("size", "must be null or an integer from 0 to 5, not a string 'big'")]),
    ({"count": 1, "Count": 1}, [("Count", "is not a known field (did you mean 'count'?)")]),
    ({"count": 1, "zzz": 1}, [("zzz", "is not a known field (the fields are count, name, tags, size)")]),
])
def test_schema_problems_name_the_field(value: object, expected: list[tuple[str, str]]) -> None:
    assert problems(_RECORD, value) == expected


def test_a_schema_is_also_a_json_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema(_RECORD)
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate({"count": 3, "name": "ab", "tags": ["x"], "size": None}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"count": 3, "other": 1}, schema)


@PROPERTY
@given(value=st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=9),
                          lambda children: st.lists(children, max_size=3)
                          | st.dictionaries(st.sampled_from(["count", "name", "tags", "size", "x"]), children,
                                            max_size=4), max_leaves=12))
def test_the_check_is_never_looser_than_its_json_schema(value: object) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    found = problems(_RECORD, value)
    if not found:
        jsonschema.validate(value, json_schema(_RECORD))
    assert all(isinstance(path, str) and problem for path, problem in found)


def test_input_error_is_a_config_error_with_its_parts() -> None:
    error = InputError("box.json", "is empty", "write one", field="gpus")
    assert isinstance(error, ConfigError) and str(error) == "box.json: gpus is empty: write one"
