"""RING_CONFIG: every bad case gets one clear problem naming the file and field; fuzzed input never raises."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mistralrs_torch import ConfigError
from mistralrs_torch.cli import cli
from mistralrs_torch_ring._config import (
    FIELDS,
    check_ring_config,
    check_ring_configs,
    load_ring_config,
    problem_lines,
    ring_config_set,
    write_ring_configs,
)

#: The seed's example file (rank 0 may listen on every interface).
SEED = {"master_ip": "0.0.0.0", "master_port": 1234, "port": 12345, "right_port": 12346, "rank": 0, "world_size": 2}
RANK1 = {"master_ip": "127.0.0.1", "master_port": 1234, "port": 12346, "right_port": 12345, "rank": 1, "world_size": 2}


def _write(folder: Path, data: object, name: str = "ring.json") -> Path:
    path = folder / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def _without(data: dict, key: str) -> dict:
    return {k: v for k, v in data.items() if k != key}


def test_the_seeds_example_is_valid(tmp_path: Path) -> None:
    config = load_ring_config(_write(tmp_path, SEED))
    assert (config.rank, config.world_size, config.master_ip, config.master_port) == (0, 2, "0.0.0.0", 1234)
    assert config.right_ip == "localhost"  # the seed's default when right_ip is left out


#: case id -> (file contents, field named, words the message must contain)
BAD = {
    **{f"missing {name}": (_without(RANK1, name), name, ["is missing"]) for name, (required, _) in FIELDS.items()
       if required},
    "unknown field with a suggestion": ({**RANK1, "rigth_ip": "10.0.0.2"}, "rigth_ip", ["did you mean right_ip"]),
    "unknown field": ({**RANK1, "colour": "blue"}, "colour", ["not a ring configuration field"]),
    "port as a string": ({**RANK1, "master_port": "1234"}, "master_port", ["integer", "without quotes"]),
    "port as a fraction": ({**RANK1, "port": 12345.5}, "port", ["integer"]),
    "rank as a boolean": ({**RANK1, "rank": True}, "rank", ["integer", "boolean"]),
    "world size null": ({**RANK1, "world_size": None}, "world_size", ["integer", "null"]),
    "master_ip a number": ({**RANK1, "master_ip": 127}, "master_ip", ["string"]),
    "right_ip a list": ({**RANK1, "right_ip": ["10.0.0.1"]}, "right_ip", ["string"]),
    "port 0": ({**RANK1, "port": 0}, "port", ["not a TCP port", "1..65535"]),
    "port 65536": ({**RANK1, "right_port": 65536}, "right_port", ["not a TCP port"]),
    "negative master port": ({**RANK1, "master_port": -1}, "master_port", ["not a TCP port"]),
    "rank = world size": ({**RANK1, "rank": 2}, "rank", ["outside 0..1"]),
    "negative rank": ({**RANK1, "rank": -1}, "rank", ["outside"]),
    "world size 1": ({**SEED, "world_size": 1}, "world_size", ["power of two", "2 or more"]),
    "world size 3": ({**RANK1, "world_size": 3}, "world_size", ["power of two", "use 2 or 4"]),
    "world size 6": ({**RANK1, "world_size": 6}, "world_size", ["use 4 or 8"]),
    "rank 1 with master_ip 0.0.0.0": ({**RANK1, "master_ip": "0.0.0.0"}, "master_ip", ["rank 1 can connect to"]),
    "rank 1 with master_ip ::": ({**RANK1, "master_ip": "::"}, "master_ip", ["rank 1"]),
    "rank 1 with an empty master_ip": ({**RANK1, "master_ip": ""}, "master_ip", ["rank 1"]),
    "master_ip not a host": ({**RANK1, "master_ip": "not a host!"}, "master_ip", ["neither an IP address"]),
    "right_ip a wildcard": ({**RANK1, "right_ip": "0.0.0.0"}, "right_ip", ["not an address of the next rank"]),
    "right_port = port on one machine": ({**RANK1, "right_port": 12346}, "right_port", ["equals port"]),
    "rank 0 port = master_port": ({**SEED, "port": 1234}, "port", ["equals master_port"]),
    "duplicate key": ('{"master_ip": "127.0.0.1", "master_port": 1234, "port": 12346, "right_port": 12345, '
                      '"rank": 1, "rank": 0, "world_size": 2}', "rank", ["more than once"]),
    "not JSON": ('{"master_ip": "127.0.0.1",}', "", ["not valid JSON", "line 1"]),
    "empty": ("  \n", "", ["is empty"]),
    "an array": ([RANK1], "", ["JSON object", "array"]),
    "not UTF-8": (b'{"master_ip": "\xff"}', "", ["not UTF-8"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_case_is_one_problem_naming_file_and_field(tmp_path: Path, case: str) -> None:
    contents, field, words = BAD[case]
    path = _write(tmp_path, contents)
    config, problems = check_ring_config(path)
    assert config is None
    assert len(problems) == 1, [str(p) for p in problems]
    (problem,) = problems
    assert problem.subject == str(path) and problem.field == field
    (text,) = problem_lines([problem])
    text = text.removeprefix("  - ")
    assert text.startswith(f"{path}: {field}" if field else str(path))
    for word in words:
        assert word in text, text
    assert problem.fix  # every problem says what to do
    with pytest.raises(ConfigError) as raised:
        load_ring_config(path)
    assert f"RING_CONFIG={path}" in str(raised.value) and text in str(raised.value)


def test_a_missing_file_and_a_folder_are_named(tmp_path: Path) -> None:
    for path, words in ((tmp_path / "nope.json", "does not exist"), (tmp_path, "is a folder")):
        _, problems = check_ring_config(path)
        assert [p.subject for p in problems] == [str(path)] and words in problems[0].message
        assert "mistralrs ring configs" in problems[0].fix


def test_every_problem_of_one_file_is_listed(tmp_path: Path) -> None:
    path = _write(tmp_path, {"master_ip": "0.0.0.0", "master_port": "1234", "port": 70000, "rank": 1,
                             "world_size": 3, "rigth_port": 1})
    _, problems = check_ring_config(path)
    assert {p.field for p in problems} == {"rigth_port", "right_port", "master_port", "port", "world_size",
                                           "master_ip"}
    with pytest.raises(ConfigError) as raised:
        load_ring_config(path)
    assert str(raised.value).count(f"  - {path}: ") == 6


def _mutations(rng: random.Random) -> object:
    """A ring config with random damage: wrong types, odd values, extra or missing keys, or no object at all."""
    values = [None, True, False, 0, -1, 1, 2, 3, 65535, 65536, 2**70, 1.5, 1e308, float("inf"), "", " ", "1234",
              "0.0.0.0", "::1", "localhost", "x" * 300, "\u00e9\u4e2d", [], [1], {}, {"a": {"b": []}}]
    data: dict = dict(rng.choice([SEED, RANK1]))
    for _ in range(rng.randint(1, 4)):
        action = rng.random()
        if action < 0.5:
            data[rng.choice(list(FIELDS))] = rng.choice(values)
        elif action < 0.7:
            data.pop(rng.choice(list(FIELDS)), None)
        elif action < 0.85:
            data[rng.choice(["", "rank ", "RANK", "\u0000", "world-size", "x" * 100])] = rng.choice(values)
        else:
            return rng.choice(values)
    return data


def test_fuzzed_configs_never_raise(tmp_path: Path) -> None:
    rng = random.Random(6)
    path = tmp_path / "fuzz.json"
    for _ in range(1500):
        choice = rng.random()
        if choice < 0.7:
            text = json.dumps(_mutations(rng), allow_nan=True)
        elif choice < 0.85:  # valid JSON cut short, or with bytes flipped
            text = json.dumps(_mutations(rng))
            cut = rng.randint(0, len(text))
            text = text[:cut] + "".join(rng.choice('{}[]",:0\\') for _ in range(rng.randint(0, 3)))
        else:
            path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randint(0, 40))))
            text = None
        if text is not None:
            path.write_text(text, encoding="utf-8")
        config, problems = check_ring_config(path)
        assert (config is None) == bool(problems)
        assert all(p.subject == str(path) and p.message and p.fix for p in problems)


def test_deep_nesting_and_huge_numbers_are_problems_not_crashes(tmp_path: Path) -> None:
    for text in ("[" * 100_000 + "]" * 100_000, '{"rank": ' + "9" * 5000 + "}"):
        _, problems = check_ring_config(_write(tmp_path, text))
        assert len(problems) >= 1 and problems[0].field in ("", "rank")


def test_the_cli_reports_fuzzed_files_without_a_traceback(tmp_path: Path) -> None:
    rng = random.Random(7)
    paths = [_write(tmp_path, json.dumps(_mutations(rng)), f"f{i}.json") for i in range(8)]
    paths.append(_write(tmp_path, b"\x00\xff{", "binary.json"))
    for path in paths:
        result = subprocess.run([sys.executable, "-m", "mistralrs_torch", "ring", "check", str(path)],
                                capture_output=True, text=True, timeout=60, check=False)
        assert "Traceback" not in result.stderr + result.stdout
        if result.returncode:
            assert result.returncode == 1 and result.stderr.startswith("error: ") and str(path) in result.stderr


# -- several files together ---------------------------------------------------------------------------------


def _set(tmp_path: Path, world: int = 4, **kwargs: object) -> list[Path]:
    return write_ring_configs(tmp_path / "set", ring_config_set(world, **kwargs))


def _edit(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("world", [2, 4, 8])
@pytest.mark.parametrize("hosts", [["127.0.0.1"], ["10.0.0.1", "10.0.0.2"], "per-rank"])
def test_generated_sets_pass_the_set_check(tmp_path: Path, world: int, hosts: object) -> None:
    hosts = [f"10.1.0.{r + 1}" for r in range(world)] if hosts == "per-rank" else hosts
    paths = _set(tmp_path, world, hosts=hosts)
    configs, problems = check_ring_configs(paths)
    assert problems == [] and sorted(c.rank for c in configs) == list(range(world))
    assert {c.master_ip for c in configs} == {hosts[0]}
    for c in configs:  # the ring closes: each right_port is the next rank's port
        assert c.right_port == configs[(c.rank + 1) % world].port


#: edit to the files of a valid 4-rank local set -> (file whose field is named, field, words)
SET_BREAKS = {
    "wrong right_port": ({1: {"right_port": 40000}}, 1, "right_port", "not the port of the next rank 2"),
    "world sizes differ": ({3: {"world_size": 8, "rank": 3}}, 3, "world_size", "differs from 4"),
    "master ports differ": ({2: {"master_port": 29501}}, 2, "master_port", "differs"),
    "master_ip differs": ({2: {"master_ip": "10.0.0.9"}}, 1, "master_ip", "different master_ip"),
    "last right_ip is not rank 0's": ({3: {"right_ip": "10.0.0.7"}}, 3, "right_ip", "differs from rank 0's address"),
    "two ranks share a port": ({2: {"port": 12345, "right_port": 12348}, 1: {"right_port": 12345}}, 2, "port",
                               "also the port of rank 0"),
    "a port is master_port": ({2: {"port": 29500}, 1: {"right_port": 29500}}, 2, "port", "master_port"),
}


@pytest.mark.parametrize("case", list(SET_BREAKS))
def test_inconsistent_neighbours_are_named(tmp_path: Path, case: str) -> None:
    edits, rank, field, words = SET_BREAKS[case]
    paths = _set(tmp_path)
    for r, changes in edits.items():
        _edit(paths[r], **changes)
    _, problems = check_ring_configs(paths)
    assert problems, case
    assert any(p.subject == str(paths[rank]) and p.field == field and words in str(p) for p in problems), \
        [str(p) for p in problems]


def test_duplicate_and_missing_ranks_are_named(tmp_path: Path) -> None:
    paths = _set(tmp_path)
    _edit(paths[3], rank=2)
    _, problems = check_ring_configs(paths)
    assert any(p.field == "rank" and "also the rank of" in p.message and p.subject == str(paths[3]) for p in problems)
    _, problems = check_ring_configs(paths[:2])
    assert [p.message for p in problems] == ["no file for ranks 2, 3 of world_size 4"]


def test_a_file_problem_is_reported_in_a_set_too(tmp_path: Path) -> None:
    paths = _set(tmp_path)
    _edit(paths[1], port="x")
    _, problems = check_ring_configs(paths)
    assert [(p.subject, p.field) for p in problems] == [(str(paths[1]), "port")]


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"world_size": 3}, "not a power of two"),
    ({"world_size": 4, "hosts": ["10.0.0.1", "10.0.0.2", "10.0.0.3"]}, "cannot hold 4 ranks evenly"),
    ({"world_size": 2, "hosts": ["0.0.0.0"]}, "not an address other machines can connect to"),
    ({"world_size": 2, "master_ip": "0.0.0.0"}, "--master-ip"),
    ({"world_size": 2, "master_port": 70000}, "--master-port 70000 is not a TCP port"),
    ({"world_size": 8, "base_port": 65530}, "leaves no room for 8 ports"),
    ({"world_size": 4, "master_port": 12346}, "falls inside the ring ports"),
])
def test_impossible_sets_are_refused_with_the_option_named(kwargs: dict, words: str) -> None:
    with pytest.raises(ConfigError) as raised:
        ring_config_set(kwargs.pop("world_size"), **kwargs)
    assert words in str(raised.value)


def test_ranks_sharing_a_machine_get_their_own_ports() -> None:
    configs = ring_config_set(4, ["127.0.0.1", "localhost", "127.0.0.1", "localhost"])
    assert [c.port for c in configs] == [12345, 12346, 12347, 12348]


# -- the CLI ------------------------------------------------------------------------------------------------


def test_ring_configs_writes_a_valid_set_and_refuses_to_overwrite(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cfg"
    result = runner.invoke(cli, ["ring", "configs", "--world-size", "4", "--hosts", "10.0.0.1,10.0.0.2",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "rank 2: on 10.0.0.2" in result.stdout and "without authentication" in result.stdout
    paths = sorted(out.glob("rank*.json"))
    assert len(paths) == 4 and check_ring_configs(paths)[1] == []
    assert json.loads(paths[0].read_text())["master_ip"] == "10.0.0.1"
    again = runner.invoke(cli, ["ring", "configs", "--world-size", "4", "--out", str(out)])
    assert again.exit_code == 1 and "already exists" in again.stderr and "--force" in again.stderr
    forced = runner.invoke(cli, ["ring", "configs", "-n", "2", "--master-ip", "127.0.0.1", "--out", str(out),
                                 "--force"])
    assert forced.exit_code == 0
    assert json.loads((out / "rank1.json").read_text())["world_size"] == 2


def test_ring_configs_rejects_a_bad_world_size_with_its_fix(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["ring", "configs", "--world-size", "6", "--out", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "--world-size 6 is not a power of two" in result.stderr
    assert not (tmp_path / "x").exists()


def test_ring_check_checks_one_file_a_set_or_ring_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _set(tmp_path, 2)
    runner = CliRunner()
    assert "a valid ring of world size 2" in runner.invoke(cli, ["ring", "check", *map(str, paths)]).stdout
    _edit(paths[0], right_port=1)
    result = runner.invoke(cli, ["ring", "check", *map(str, paths)])
    assert result.exit_code == 1 and f"{paths[0]}: right_port: 1 is not the port of the next rank 1" in result.stderr
    monkeypatch.setenv("RING_CONFIG", str(paths[1]))
    assert runner.invoke(cli, ["ring", "check"]).stdout.startswith("ok: 1 file, valid (rank 1)")
    monkeypatch.delenv("RING_CONFIG")
    assert "RING_CONFIG is not set" in runner.invoke(cli, ["ring", "check"]).stderr
