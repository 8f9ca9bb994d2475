"""ring's hooks: where a rank meets the others, doctor's checks, the launch environment, and start-up failures."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mistralrs_torch import CollectiveError, ConfigError, PluginManager
from mistralrs_torch.doctor import run_doctor
from mistralrs_torch_ring import plugin
from mistralrs_torch_ring._config import check_ring_configs, ring_config_set, write_ring_configs
from mistralrs_torch_ring._doctor import ring_checks
from mistralrs_torch_ring._rendezvous import ring_rendezvous

TORCHRUN = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _configs(tmp_path: Path, world: int = 2, **kwargs: object) -> list[Path]:
    return write_ring_configs(tmp_path / "ring", ring_config_set(world, **kwargs))


# -- rendezvous ---------------------------------------------------------------------------------------------


def test_ring_config_gives_the_rendezvous_and_names_its_fields(tmp_path: Path) -> None:
    paths = _configs(tmp_path, master_port=29611)
    r = ring_rendezvous({"RING_CONFIG": str(paths[1]), "LOCAL_RANK": "1"})
    assert (r.rank, r.world_size, r.master_addr, r.master_port, r.local_rank) == (1, 2, "127.0.0.1", 29611, 1)
    assert (r.source, r.addr_name, r.port_name) == (f"RING_CONFIG={paths[1]}", "master_ip", "master_port")
    assert not r.hosts_store and ring_rendezvous({"RING_CONFIG": str(paths[0])}).hosts_store


def test_torchrun_variables_work_without_ring_config() -> None:
    r = ring_rendezvous({**TORCHRUN, "LOCAL_RANK": "1"})
    assert (r.rank, r.world_size, r.master_port, r.local_rank, r.source) == (1, 2, 29500, 1, "torchrun variables")
    agent = ring_rendezvous({**TORCHRUN, "RANK": "0", "TORCHELASTIC_USE_AGENT_STORE": "True",
                             "TORCHELASTIC_RESTART_COUNT": "2"})
    assert not agent.hosts_store and agent.namespace == "2"  # torchrun's agent hosts the store


@pytest.mark.parametrize(("environ", "words"), [
    ({}, ["RING_CONFIG", "mistralrs ring configs", "RANK"]),
    ({**TORCHRUN, "WORLD_SIZE": "3"}, ["WORLD_SIZE=3", "power of two"]),
    ({**TORCHRUN, "WORLD_SIZE": "1", "RANK": "0"}, ["WORLD_SIZE=1"]),
    ({"RANK": "0", "WORLD_SIZE": "2"}, ["MASTER_ADDR, MASTER_PORT are not set"]),
    ({**TORCHRUN, "MASTER_PORT": "99999"}, ["MASTER_PORT=99999 is outside 1..65535"]),
    ({**TORCHRUN, "RANK": "x"}, ["RANK='x' is not an integer"]),
    ({"RING_CONFIG": "/nonexistent/ring.json"}, ["/nonexistent/ring.json", "does not exist"]),
])
def test_a_missing_or_bad_configuration_is_a_config_error(environ: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as raised:
        ring_rendezvous(environ)
    for word in words:
        assert word in str(raised.value)


def test_ring_config_and_torchrun_variables_must_agree(tmp_path: Path) -> None:
    paths = _configs(tmp_path)
    with pytest.raises(ConfigError, match=r"says rank 0 of 2, but RANK=1"):
        ring_rendezvous({"RING_CONFIG": str(paths[0]), **TORCHRUN})
    assert ring_rendezvous({"RING_CONFIG": str(paths[1]), **TORCHRUN}).rank == 1


# -- doctor -------------------------------------------------------------------------------------------------


def _by_status(checks: list) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for c in checks:
        found.setdefault(c.status, []).append(f"{c.subject}: {c.message} | {c.fix}")
    return found


def test_doctor_says_nothing_when_ring_is_neither_active_nor_configured() -> None:
    assert ring_checks(frozenset({"cpu"}), {}) == []


def test_doctor_accepts_a_valid_ring_config_and_explains_the_ports(tmp_path: Path) -> None:
    paths = _configs(tmp_path)
    found = _by_status(ring_checks(frozenset({"ring", "cpu"}), {"RING_CONFIG": str(paths[1])}))
    assert "error" not in found and "warning" not in found
    (ok,) = found["ok"]
    assert "rank 1 of 2, rendezvous at 127.0.0.1:29500" in ok and "ports the OS picks" in ok


def test_doctor_reports_each_problem_of_ring_config_as_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"master_ip": "0.0.0.0", "master_port": 1234, "port": 12345, "right_port": 12346,
                               "rank": 1, "world_size": 3}))
    errors = _by_status(ring_checks(frozenset({"ring"}), {"RING_CONFIG": str(bad)}))["error"]
    assert len(errors) == 2
    assert any(f"{bad}: world_size: 3 is not a power of two" in e for e in errors)
    assert any(f"{bad}: master_ip" in e and "rank 0's address" in e for e in errors)


@pytest.mark.parametrize(("active", "environ", "status", "words"), [
    (frozenset({"ring"}), {}, "error", "neither RING_CONFIG nor torchrun"),
    (frozenset({"ring"}), {**TORCHRUN, "WORLD_SIZE": "6"}, "error", "power of two"),
    (frozenset({"ring"}), {**TORCHRUN, "MISTRALRS_COLLECTIVE_TIMEOUT": "0"}, "error", "MISTRALRS_COLLECTIVE_TIMEOUT"),
    (frozenset({"ring"}), {**TORCHRUN, "MISTRALRS_RENDEZVOUS_TIMEOUT": "inf"}, "error", "never wait forever"),
    (frozenset({"ring"}), TORCHRUN, "ok", "torchrun variables: rank 1 of 2"),
])
def test_doctor_checks_the_torchrun_fallback_and_timeouts(active: frozenset, environ: dict, status: str,
                                                          words: str) -> None:
    found = _by_status(ring_checks(active, environ))
    assert any(words in line for line in found.get(status, [])), found


def test_doctor_warns_when_ring_config_is_set_but_ring_is_not_active(tmp_path: Path) -> None:
    paths = _configs(tmp_path)
    found = _by_status(ring_checks(frozenset({"cpu"}), {"RING_CONFIG": str(paths[0])}))
    assert any("RING_CONFIG is set but ring is not active" in w for w in found["warning"])


def test_doctor_flags_ring_config_contradicting_the_torchrun_variables(tmp_path: Path) -> None:
    paths = _configs(tmp_path)
    found = _by_status(ring_checks(frozenset({"ring"}), {"RING_CONFIG": str(paths[0]), **TORCHRUN}))
    assert any("says rank 0 of 2, but RANK=1" in e for e in found["error"])


def test_doctor_runs_the_ring_checks_through_the_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "ring.json"
    bad.write_text("{")
    for name in ("MISTRALRS_FEATURES", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RING_CONFIG", str(bad))
    report = run_doctor(verify=False, environ={"RING_CONFIG": str(bad)})
    mine = [c for c in report.sections["configuration"] if c.plugin == "ring" and c.status == "error"]
    assert mine and str(bad) in mine[0].message and "not valid JSON" in mine[0].message
    assert report.exit_code == 1


# -- hooks --------------------------------------------------------------------------------------------------


def test_the_backend_is_returned_only_when_ring_is_active() -> None:
    assert plugin.mistralrs_collective_backends(frozenset({"cpu"})) == ()
    (backend,) = plugin.mistralrs_collective_backends(frozenset({"ring", "cpu"}))
    assert (backend.feature, backend.name) == ("ring", "ring-gloo") and backend.dispatch_priority > -1000


def test_the_cli_and_launch_hooks_stay_light() -> None:
    code = ("import sys, tempfile, mistralrs_torch_ring.plugin as p\n"
            "p.mistralrs_cli_commands(); p.mistralrs_doctor_checks(frozenset({'ring'}), {})\n"
            "p.mistralrs_launch_environment('ring', 0, 2, '127.0.0.1', 29500, tempfile.mkdtemp())\n"
            "assert 'torch' not in sys.modules, 'torch'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_the_launch_environment_writes_a_consistent_set(tmp_path: Path) -> None:
    envs = [plugin.mistralrs_launch_environment(feature="ring", rank=r, world_size=4, master_addr="127.0.0.1",
                                                master_port=40000, workdir=str(tmp_path)) for r in range(4)]
    paths = [Path(e["RING_CONFIG"]) for e in envs]
    assert [p.parent for p in paths] == [tmp_path / "ring"] * 4
    configs, problems = check_ring_configs(paths)
    assert problems == []
    assert [(c.rank, c.master_port, c.master_ip) for c in configs] == [(r, 40000, "127.0.0.1") for r in range(4)]
    assert plugin.mistralrs_launch_environment(feature="nccl", rank=0, world_size=4, master_addr="127.0.0.1",
                                               master_port=40000, workdir=str(tmp_path)) is None
    with pytest.raises(ConfigError, match="power of two"):
        plugin.mistralrs_launch_environment(feature="ring", rank=0, world_size=3, master_addr="127.0.0.1",
                                            master_port=40000, workdir=str(tmp_path))


def test_the_manager_runs_the_launch_hook_of_the_owner_only(tmp_path: Path) -> None:
    manager = PluginManager(environ={})
    env = manager.call_plugin("ring", "mistralrs_launch_environment", lambda r: isinstance(r, dict), feature="ring",
                              rank=1, world_size=2, master_addr="127.0.0.1", master_port=40100,
                              workdir=str(tmp_path))
    assert Path(env["RING_CONFIG"]).name == "rank1.json"
    # A deliberate ConfigError reaches the caller with its message; the plugin is not quarantined for it.
    with pytest.raises(ConfigError):
        manager.call_plugin("ring", "mistralrs_launch_environment", lambda r: True, feature="ring", rank=0,
                            world_size=5, master_addr="127.0.0.1", master_port=40100, workdir=str(tmp_path))
    assert manager.broken == ()


# -- start-up failures, in this process (no rank ever connects) ----------------------------------------------


def _rank0(tmp_path: Path, port: int, master_ip: str = "127.0.0.1") -> dict[str, str]:
    paths = _configs(tmp_path, master_port=port, master_ip=master_ip if master_ip != "0.0.0.0" else None)
    if master_ip == "0.0.0.0":
        data = json.loads(paths[0].read_text())
        paths[0].write_text(json.dumps({**data, "master_ip": "0.0.0.0"}))
    return {"RING_CONFIG": str(paths[0]), "MISTRALRS_RENDEZVOUS_TIMEOUT": "1.5", "MISTRALRS_COLLECTIVE_TIMEOUT": "5"}


@pytest.mark.parametrize("master_ip", ["127.0.0.1", "0.0.0.0"])
def test_a_port_in_use_is_a_clear_error(tmp_path: Path, master_ip: str) -> None:
    from mistralrs_torch_ring._backend import GlooCollectives

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        environ = _rank0(tmp_path, port, master_ip)
        with pytest.raises(ConfigError) as raised:
            GlooCollectives().communicator(environ)
    text = str(raised.value)
    assert f"master_port={port}" in text and "already in use" in text and environ["RING_CONFIG"] in text


def test_rank0_listens_only_on_master_ip_when_it_is_an_address(tmp_path: Path) -> None:
    from mistralrs_torch_ring._backend import GlooCollectives

    with pytest.raises(ConfigError, match=r"192.0.2.123 .* is not an address of this machine"):
        GlooCollectives().communicator(_rank0(tmp_path, _free_port(), "192.0.2.123"))


def test_a_rank_that_never_joins_is_named_after_the_rendezvous_timeout(tmp_path: Path) -> None:
    from mistralrs_torch_ring._backend import GlooCollectives

    started = time.monotonic()
    with pytest.raises(CollectiveError) as raised:
        GlooCollectives().communicator(_rank0(tmp_path, _free_port()))
    assert time.monotonic() - started < 10
    error = raised.value
    assert (error.rank, error.peers, error.timeout) == (0, (1,), 1.5)
    assert "rank 1 never joined" in str(error) and "timed out after 1.5s" in str(error)
    assert "MISTRALRS_RENDEZVOUS_TIMEOUT" in str(error)


def test_a_rank_whose_rank0_never_comes_fails_within_the_timeout(tmp_path: Path) -> None:
    from mistralrs_torch_ring._backend import GlooCollectives

    paths = _configs(tmp_path, master_port=_free_port())
    started = time.monotonic()
    with pytest.raises(CollectiveError) as raised:
        GlooCollectives().communicator({"RING_CONFIG": str(paths[1]), "MISTRALRS_RENDEZVOUS_TIMEOUT": "1.5"})
    assert time.monotonic() - started < 15
    assert raised.value.peers == (0,)
    assert "could not reach the rendezvous store of rank 0" in str(raised.value) and "1.5s" in str(raised.value)
