"""nccl's rules on simulated machines: world size, MISTRALRS_NO_NCCL, torchrun variables, device-mapping mode."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mistralrs_torch import ConfigError, PluginManager, Selection, load_system, resolve
from mistralrs_torch.ops import Device
from mistralrs_torch.parallel import device_mapping_mode
from mistralrs_torch_nccl import plugin
from mistralrs_torch_nccl._doctor import nccl_checks
from mistralrs_torch_nccl._world import local_world_size, nccl_rendezvous

H100x8 = load_system("multi-gpu-8xh100")
H100 = load_system("h100")
TORCHRUN = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}


@pytest.mark.parametrize(("environ", "gpus", "expected"), [
    ({}, 8, (8, "all 8 visible GPUs")),
    ({}, 1, (1, "all 1 visible GPUs")),
    ({"MISTRALRS_MN_LOCAL_WORLD_SIZE": "2"}, 8, (2, "MISTRALRS_MN_LOCAL_WORLD_SIZE=2")),
    ({"LOCAL_WORLD_SIZE": "4"}, 8, (4, "LOCAL_WORLD_SIZE=4 (the launcher's)")),
    ({"MISTRALRS_MN_LOCAL_WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4"}, 8, (4, "MISTRALRS_MN_LOCAL_WORLD_SIZE=4")),
])
def test_the_local_world_size_and_where_it_comes_from(environ: dict, gpus: int, expected: tuple) -> None:
    assert local_world_size(environ, gpus) == expected


def test_by_default_a_launched_job_uses_no_more_gpus_than_ranks() -> None:
    assert local_world_size({}, 8, world_size=2) == (2, "WORLD_SIZE=2")


@pytest.mark.parametrize(("environ", "gpus", "words"), [
    ({}, 0, ["none is visible", "MISTRALRS_NO_NCCL=1"]),
    ({}, 6, ["all 6 visible GPUs gives 6", "MISTRALRS_MN_LOCAL_WORLD_SIZE=4"]),
    ({"MISTRALRS_MN_LOCAL_WORLD_SIZE": "3"}, 8, ["power of two", "MISTRALRS_MN_LOCAL_WORLD_SIZE=2"]),
    ({"MISTRALRS_MN_LOCAL_WORLD_SIZE": "16"}, 8, ["asks for 16 GPUs but 8 are visible", "at most 8"]),
    ({"MISTRALRS_MN_LOCAL_WORLD_SIZE": "two"}, 8, ["'two' is not an integer", "number of GPUs", "at most 8"]),
    ({"MISTRALRS_MN_LOCAL_WORLD_SIZE": "0"}, 8, ["=0 is outside 1..", "number of GPUs"]),
    ({"MISTRALRS_MN_LOCAL_WORLD_SIZE": "\u00b2"}, 8, ["is not an integer (ASCII digits 0-9)"]),
    ({"MISTRALRS_MN_LOCAL_WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "\u0662"}, 8, ["LOCAL_WORLD_SIZE=", "not an integer"]),
    ({"MISTRALRS_MN_LOCAL_WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "4"}, 8, ["make them agree"]),
])
def test_broken_world_size_rules_say_the_value_and_the_fix(environ: dict, gpus: int, words: list[str]) -> None:
    with pytest.raises(ConfigError) as raised:
        local_world_size(environ, gpus)
    for word in words:
        assert word in str(raised.value)


def test_one_gpu_needs_no_launcher() -> None:
    r = nccl_rendezvous({"MISTRALRS_MN_LOCAL_WORLD_SIZE": "1"}, 8)
    assert (r.rank, r.world_size, r.local_rank) == (0, 1, 0) and "single GPU" in r.source
    assert nccl_rendezvous({}, 1).world_size == 1


def test_several_gpus_without_a_launcher_say_how_to_start_them() -> None:
    with pytest.raises(ConfigError) as raised:
        nccl_rendezvous({}, 8)
    message = str(raised.value)
    assert "mistralrs launch -n 8 --backend nccl" in message and "torchrun --nproc-per-node 8" in message


def test_torchrun_variables_are_honoured_for_multi_node() -> None:
    r = nccl_rendezvous({**TORCHRUN, "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"}, 8)
    assert (r.rank, r.world_size, r.local_rank, r.master_addr) == (3, 16, 3, "10.0.0.1")


@pytest.mark.parametrize(("environ", "words"), [
    ({**TORCHRUN, "WORLD_SIZE": "6", "RANK": "1", "LOCAL_RANK": "1"}, "WORLD_SIZE=6: nccl needs a power of two"),
    ({**TORCHRUN, "LOCAL_RANK": "4", "LOCAL_WORLD_SIZE": "4"}, "LOCAL_RANK=4 has no GPU"),
    ({**TORCHRUN, "MASTER_ADDR": ""}, "MASTER_ADDR is not set"),
])
def test_torchrun_variables_are_checked(environ: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        nccl_rendezvous(environ, 8)


def _statuses(checks: list) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for c in checks:
        found.setdefault(c.status, []).append(f"{c.subject}: {c.message} | {c.fix}")
    return found


def _active(system: object, environ: dict, features: tuple[str, ...] | None = None) -> frozenset[str]:
    manager = PluginManager(environ={})
    selection = Selection("explicit", features, "--features") if features else Selection()
    return frozenset(resolve(manager.features, manager.broken, selection, system, environ).active)


def test_on_eight_h100s_auto_mode_turns_nccl_on_and_device_mapping_off() -> None:
    active = _active(H100x8, {})
    assert {"nccl", "cuda"} <= active
    found = _statuses(nccl_checks(active, H100x8, {}))
    assert "error" not in found
    assert any(line.startswith("device mapping: off: NCCL is active") for line in found["info"])
    assert any("8 ranks on this machine" in line and "mistralrs launch -n 8 --backend nccl" in line
               for line in found["ok"])


def test_mistralrs_no_nccl_turns_nccl_off_and_device_mapping_on() -> None:
    environ = {"MISTRALRS_NO_NCCL": "1"}
    active = _active(H100x8, environ)
    assert "nccl" not in active
    found = _statuses(nccl_checks(active, H100x8, environ))
    assert any("device mapping: on (MISTRALRS_NO_NCCL=1)" in line and "8 GPUs" in line for line in found["info"])


def test_ranks_sharing_the_machine_keep_device_mapping_off_without_nccl() -> None:
    environ = {"MISTRALRS_NO_NCCL": "1", "LOCAL_WORLD_SIZE": "8"}
    found = _statuses(nccl_checks(_active(H100x8, environ), H100x8, environ))
    assert any(line.startswith("device mapping: off: 8 ranks share this machine") for line in found["info"])


@pytest.mark.parametrize(("environ", "status", "words"), [
    # NCCL active: an explicit map contradicts one process per GPU.
    ({"MISTRALRS_DEVICE_LAYERS": "0:16;1:16"}, "error",
     "device layers: MISTRALRS_DEVICE_LAYERS='0:16;1:16' is set, but NCCL is active: each process holds one GPU"),
    # NCCL off: the explicit map is honoured, and judged against the GPUs.
    ({"MISTRALRS_NO_NCCL": "1", "MISTRALRS_DEVICE_LAYERS": "0:16;1:16"}, "info",
     "device layers: on (MISTRALRS_NO_NCCL=1): explicit map from MISTRALRS_DEVICE_LAYERS: cuda:0: 16 layers, "
     "cuda:1: 16 layers"),
    ({"MISTRALRS_NO_NCCL": "1", "MISTRALRS_DEVICE_LAYERS": "0:16;9:16"}, "error",
     "device map names '9', which is not a device here"),
    ({"MISTRALRS_NO_NCCL": "1", "LOCAL_WORLD_SIZE": "8", "MISTRALRS_DEVICE_LAYERS": "0:16"}, "error",
     "is set, but 8 ranks share this machine"),
])
def test_mistralrs_device_layers_is_judged_with_nccl_on_and_off(environ: dict, status: str, words: str) -> None:
    found = _statuses(nccl_checks(_active(H100x8, environ), H100x8, environ))
    assert any(words in line for line in found.get(status, [])), found
    if status == "info":
        assert not any("spread over" in line for line in found["info"])  # the explicit map, not the automatic one


def test_doctor_reports_the_explicit_map_once_whichever_judges_it() -> None:
    from mistralrs_torch import load_system
    from mistralrs_torch.doctor import run_doctor

    for environ in ({"MISTRALRS_DEVICE_LAYERS": "0:16;1:16"},
                    {"MISTRALRS_DEVICE_LAYERS": "0:16;1:16", "MISTRALRS_NO_NCCL": "1"}):
        report = run_doctor(environ=environ, system=load_system("multi-gpu-8xh100"), verify=False)
        assert len([c for c in report.sections["configuration"] if c.subject == "device layers"]) == 1


@pytest.mark.parametrize(("environ", "status", "words"), [
    ({"MISTRALRS_NO_NCCL": "1", "MISTRALRS_MN_LOCAL_WORLD_SIZE": "4"}, "warning", "is ignored: MISTRALRS_NO_NCCL=1"),
    ({"MISTRALRS_NO_NCCL": "1", "WORLD_SIZE": "8"}, "warning", "WORLD_SIZE=8 ranks were launched"),
    ({"MISTRALRS_NO_NCCL": "maybe"}, "error", "MISTRALRS_NO_NCCL=1 or MISTRALRS_NO_NCCL=0"),
])
def test_contradictions_and_bad_values_of_mistralrs_no_nccl(environ: dict, status: str, words: str) -> None:
    found = _statuses(nccl_checks(frozenset({"cuda", "cpu"}), H100x8, environ))
    assert any(words in line for line in found[status]), found


@pytest.mark.parametrize(("environ", "words"), [
    ({"MISTRALRS_MN_LOCAL_WORLD_SIZE": "3"}, "MISTRALRS_MN_LOCAL_WORLD_SIZE=2"),
    ({"MISTRALRS_MN_LOCAL_WORLD_SIZE": "16"}, "at most 8"),
    ({**TORCHRUN, "WORLD_SIZE": "x"}, "WORLD_SIZE='x' is not an integer"),
    ({"MISTRALRS_COLLECTIVE_TIMEOUT": "-3"}, "MISTRALRS_COLLECTIVE_TIMEOUT"),
])
def test_doctor_reports_bad_values_when_nccl_is_active(environ: dict, words: str) -> None:
    found = _statuses(nccl_checks(frozenset({"nccl", "cuda"}), H100x8, environ))
    assert any(words in line for line in found.get("error", [])), found


def test_one_gpu_selected_explicitly_is_a_world_of_one() -> None:
    active = _active(H100, {}, ("nccl",))
    assert "nccl" in active
    found = _statuses(nccl_checks(active, H100, {}))
    assert "error" not in found and any("1 rank on this machine" in line for line in found["ok"])
    assert "nccl" not in _active(H100, {})  # auto mode needs 2 GPUs


def test_a_world_size_variable_for_an_inactive_nccl_is_flagged() -> None:
    found = _statuses(nccl_checks(frozenset({"cpu"}), H100, {"MISTRALRS_MN_LOCAL_WORLD_SIZE": "2"}))
    assert any("nccl is not active, so it is ignored" in w for w in found["warning"])


def test_the_nccl_backend_owns_one_device_per_rank_which_disables_device_mapping() -> None:
    (backend,) = plugin.mistralrs_collective_backends(frozenset({"nccl", "cuda"}))
    assert backend.one_device_per_rank and backend.feature == "nccl"
    gpus = [Device(f"cuda:{i}", "H100", "cuda", 80 << 30, 80 << 30) for i in range(8)]
    assert device_mapping_mode([backend], gpus)[0] == "disabled"
    assert device_mapping_mode([], gpus)[0] == "auto"
    assert plugin.mistralrs_collective_backends(frozenset({"cuda"})) == ()


def test_without_a_gpu_the_backend_says_so() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    (backend,) = plugin.mistralrs_collective_backends(frozenset({"nccl"}))
    with pytest.raises(ConfigError, match="none is visible"):
        backend.communicator({})


def test_the_launch_environment_sets_the_local_world_size() -> None:
    env = plugin.mistralrs_launch_environment(feature="nccl", rank=1, world_size=4, master_addr="127.0.0.1",
                                              master_port=1, workdir="/nonexistent")
    assert env == {"MISTRALRS_MN_LOCAL_WORLD_SIZE": "4"}
    assert plugin.mistralrs_launch_environment(feature="ring", rank=1, world_size=4, master_addr="127.0.0.1",
                                               master_port=1, workdir="/nonexistent") is None


def test_the_doctor_and_launch_hooks_import_no_torch() -> None:
    code = (
        "import sys, mistralrs_torch, mistralrs_torch_nccl.plugin as p\n"
        "p.mistralrs_doctor_checks(frozenset({'nccl', 'cuda'}), mistralrs_torch.load_system('multi-gpu-8xh100'), {})\n"
        "p.mistralrs_launch_environment('nccl', 0, 2, '127.0.0.1', 1, '/tmp')\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
