"""System snapshot files (`--system FILE`) against their schema: the published JSON Schema, the shipped profiles,
every malformation the hostile-input review found, and hypothesis-driven mutations of real profiles."""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mistralrs_torch import SystemProfileError, SystemSnapshot, load_system, probe_system
from mistralrs_torch.system import PROFILE_NAMES, snapshot_json_schema
from mistralrs_torch.validation import shown

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "docs" / "system.schema.json"
PROFILES = ROOT / "core" / "src" / "mistralrs_torch" / "system" / "profiles"


def test_the_published_schema_is_the_one_the_loader_checks() -> None:
    published = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert published == snapshot_json_schema(), \
        "regenerate it: mistralrs plugins system --schema > docs/system.schema.json"
    jsonschema.Draft202012Validator.check_schema(published)


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_every_shipped_profile_follows_the_published_schema(name: str) -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.validate(json.loads((PROFILES / f"{name}.json").read_text(encoding="utf-8")), schema)


def test_this_machine_follows_the_published_schema() -> None:
    data = json.loads(probe_system(environ={}).dumps())
    jsonschema.validate(data, json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))
    assert SystemSnapshot.from_json(data).os == data["os"]


def _h100() -> dict[str, Any]:
    return json.loads((PROFILES / "h100.json").read_text(encoding="utf-8"))


def _load(tmp_path: Path, data: Any) -> SystemSnapshot:
    path = tmp_path / "box.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return load_system(str(path))


#: What the review tried, as (change, field named in the error).
MALFORMED: dict[str, tuple[Callable[[dict], object], str]] = {
    "memory_free lots": (lambda d: d["gpus"][0].update(memory_free="lots"), "gpus[0].memory_free"),
    "flags a string": (lambda d: d["cpu"].update(flags="avx2"), "cpu.flags"),
    "os a number": (lambda d: d.update(os=5), "os"),
    "negative compute capability": (lambda d: d["gpus"][0].update(compute_capability=[-3, 0]),
                                    "gpus[0].compute_capability[0]"),
    "absurd compute capability": (lambda d: d["gpus"][0].update(compute_capability=[99, 0]),
                                  "gpus[0].compute_capability"),
    "negative memory": (lambda d: d.update(memory_total=-1), "memory_total"),
    "absurd memory": (lambda d: d["gpus"][0].update(memory_total=10**30), "gpus[0].memory_total"),
    "free above total": (lambda d: d["gpus"][0].update(memory_free=d["gpus"][0]["memory_total"] + 1),
                         "gpus[0].memory_free"),
    "zero cores": (lambda d: d["cpu"].update(cores=0), "cpu.cores"),
    "absurd cores": (lambda d: d["cpu"].update(cores=10**9), "cpu.cores"),
    "index out of order": (lambda d: d["gpus"][0].update(index=7), "gpus[0].index"),
    "negative index": (lambda d: d["gpus"][0].update(index=-1), "gpus[0].index"),
    "gpus a number": (lambda d: d.update(gpus=5), "gpus"),
    "libraries a list": (lambda d: d.update(libraries=["cuda"]), "libraries"),
    "a control character": (lambda d: d["gpus"][0].update(name="H100\x1b[2J"), "gpus[0].name"),
    "a 5000-digit integer": (lambda d: d.update(memory_total=int("9" * 4000)), "memory_total"),
    "an unknown field": (lambda d: d.update(memory_totl=1), "memory_totl"),
    "a misspelled gpu field": (lambda d: d["gpus"][0].update(Name="x"), "gpus[0].Name"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_each_malformation_is_refused_naming_its_field(tmp_path: Path, case: str) -> None:
    change, field = MALFORMED[case]
    data = _h100()
    change(data)
    with pytest.raises(SystemProfileError) as raised:
        _load(tmp_path, data)
    message = str(raised.value)
    assert f"  - {field} " in message and "malformed system snapshot" in message, message
    assert len(message) < 1000
    if case == "a misspelled gpu field":
        assert "did you mean 'name'?" in message


@pytest.mark.parametrize(("text", "words"), [
    ("[" * 5000 + "]" * 5000, "more than 32 deep"),
    ('{"schema": "mistralrs.system/1", "memory_total": ' + "9" * 5000 + "}", "number too long"),
    ('{"schema": "mistralrs.system/1", "os": "linux", "os": "macos"}', "more than once"),
])
def test_unparseable_files_are_profile_errors(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(SystemProfileError, match=words):
        _load(tmp_path, text)


def test_a_million_gpus_are_refused_fast(tmp_path: Path) -> None:
    data = _h100()
    gpu = json.dumps({"index": 0, "name": "x", "vendor": "nvidia"})
    path = tmp_path / "million.json"
    path.write_text(json.dumps(data)[:-1] + ', "gpus": [' + ", ".join([gpu] * 1_000_000) + "]}", encoding="utf-8")
    started = time.monotonic()
    with pytest.raises(SystemProfileError, match="is over 1 MiB"):
        load_system(str(path))
    assert time.monotonic() - started < 2.0  # it took 38 s before
    data["gpus"] = [dict(data["gpus"][0], index=i) for i in range(1025)]
    with pytest.raises(SystemProfileError, match="gpus has 1025 entries"):
        SystemSnapshot.from_json(data)


# -- hypothesis: mutate a real profile anywhere, with any JSON value ----------------------------------------

_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30) | st.floats(allow_nan=False)
    | st.text(max_size=12) | st.sampled_from(["linux", "nvidia", "avx2", "", "x" * 300, "\x07"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6)


def _paths(value: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(path, container, key) of every field and array entry of ``value``."""
    found = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        path = f"{prefix}[{key}]" if isinstance(key, int) else f"{prefix}.{key}" if prefix else key
        found.append((path, value, key))
        found += _paths(item, path)
    return found


def _ancestors(path: str) -> list[str]:
    parts = re.findall(r"[^.\[]+|\[\d+\]", path)
    joined = [""]
    for part in parts:
        joined.append(joined[-1] + (part if part.startswith("[") or not joined[-1] else f".{part}"))
    return [p for p in joined if p and not p.startswith("[")]


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(PROFILE_NAMES), choice=st.integers(min_value=0), action=st.sampled_from(
    ["replace", "delete", "add"]), value=_values, key=st.text(min_size=1, max_size=8))
def test_any_mutation_loads_or_is_refused_naming_the_field(name: str, choice: int, action: str, value: Any,
                                                          key: str) -> None:
    data = json.loads((PROFILES / f"{name}.json").read_text(encoding="utf-8"))
    paths = _paths(data)
    path, container, field = paths[choice % len(paths)]
    if action == "replace":
        container[field] = copy.deepcopy(value)
    elif action == "delete" and isinstance(container, dict):
        del container[field]
    elif isinstance(container, dict):
        container[key] = copy.deepcopy(value)
        path = path.rsplit(".", 1)[0] + f".{key}" if "." in path else key
    else:
        container.append(copy.deepcopy(value))
    try:
        snapshot = SystemSnapshot.from_json(data, source="box.json")
    except SystemProfileError as exc:
        message = str(exc)
        # The field at fault, or the object or array holding it (a missing field, a list of the wrong length);
        # an added field by its name, quoted when it is not a plain name.
        named = [f"  - {a}" for a in _ancestors(path)] + [key, shown(key, 40), "schema "]
        assert any(n in message for n in named), (path, message)
        assert "Traceback" not in message and len(message) < 4000
        return
    # Accepted: then the published JSON Schema accepts it too (the check is never looser than the schema).
    jsonschema.validate(json.loads(json.dumps(data)), json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))
    assert isinstance(snapshot, SystemSnapshot)
