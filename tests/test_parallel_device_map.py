"""Device mapping (layers over devices by free memory, explicit maps, off under NCCL) and the rendezvous helpers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mistralrs_torch import ConfigError
from mistralrs_torch.ops import Device
from mistralrs_torch.parallel import (
    DEFAULT_TIMEOUT,
    Timeouts,
    auto_device_map,
    collective_timeouts,
    device_mapping_mode,
    is_loopback,
    is_power_of_two,
    parse_device_map,
    plan_device_map,
    torchrun_rendezvous,
    valid_host,
)

GiB = 1 << 30
CPU = Device("cpu", "Xeon", "cpu", 512 * GiB)


def _gpus(*free_gib: float) -> list[Device]:
    return [Device(f"cuda:{i}", "GPU", "cuda", 80 * GiB, int(f * GiB)) for i, f in enumerate(free_gib)]


def _counts(layers: tuple[str, ...]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for device in layers:
        counts[device] = counts.get(device, 0) + 1
    return counts


def _contiguous(layers: tuple[str, ...]) -> bool:
    seen: list[str] = []
    for device in layers:
        if not seen or seen[-1] != device:
            if device in seen:
                return False
            seen.append(device)
    return True


def test_a_layer_that_overflows_to_the_next_device_does_not_split_a_run() -> None:
    # Found by tests/test_device_map_properties.py: the 14 MiB layer 0 overflows cuda:1 onto cuda:2, and the small
    # layers after it once went back to cuda:1, splitting cuda:2's run (and the order of the devices).
    MiB = 1 << 20
    gpus = [Device(f"cuda:{i}", "GPU", "cuda", 80 * GiB, f * MiB) for i, f in enumerate((1, 15, 17))]
    plan = auto_device_map(4, [14 * MiB, 0, 1 * MiB, 14 * MiB], [*gpus, CPU])
    assert plan.layers == ("cuda:2", "cuda:2", "cuda:2", "cpu") and _contiguous(plan.layers)


def test_layers_follow_free_memory() -> None:
    m = auto_device_map(32, GiB, [*_gpus(60, 20), CPU])
    assert m.mode == "auto" and _contiguous(m.layers)
    assert _counts(m.layers) == {"cuda:0": 24, "cuda:1": 8}
    assert m.summary() == "cuda:0: layers 0-23; cuda:1: layers 24-31"
    assert "cuda:0 60.0 GiB free" in m.reason


def test_equal_devices_share_equally_and_uneven_layers_are_weighed_by_size() -> None:
    assert _counts(auto_device_map(8, GiB, _gpus(40, 40, 40, 40)).layers) == {f"cuda:{i}": 2 for i in range(4)}
    sizes = [4 * GiB] + [GiB] * 8  # an embedding layer four times the size of the others
    m = auto_device_map(9, sizes, _gpus(30, 30))
    assert _counts(m.layers) == {"cuda:0": 3, "cuda:1": 6}  # 6 GiB each


def test_no_device_overflows_its_free_memory() -> None:
    m = auto_device_map(10, 3 * GiB, _gpus(10, 25), headroom=0.1)
    per = _counts(m.layers)
    assert per["cuda:0"] * 3 <= 10 * 0.9 and per["cuda:1"] * 3 <= 25 * 0.9


def test_what_does_not_fit_runs_on_the_cpu_or_is_an_error() -> None:
    m = auto_device_map(10, 4 * GiB, [*_gpus(10, 10), CPU])
    assert m.layers[-1] == "cpu" and _counts(m.layers)["cpu"] == 6 and "did not fit" in m.reason
    with pytest.raises(ConfigError) as raised:
        auto_device_map(10, 4 * GiB, _gpus(10, 10), cpu_offload=False)
    assert "do not fit" in str(raised.value) and "cuda:1 (10.0 GiB free)" in str(raised.value)


def test_without_an_accelerator_everything_stays_on_the_cpu() -> None:
    m = auto_device_map(4, GiB, [CPU])
    assert m.layers == ("cpu",) * 4 and m.mode == "single"


@pytest.mark.parametrize("spec", ["0:3;1:5", "cuda:0:3;cuda:1:5", "0:3,1:5", {"cuda:0": 3, "cuda:1": 5}])
def test_an_explicit_map_overrides(spec: object) -> None:
    m = parse_device_map(spec, 8, [*_gpus(1, 1), CPU])
    assert m.mode == "explicit" and m.layers == ("cuda:0",) * 3 + ("cuda:1",) * 5


@pytest.mark.parametrize(("spec", "words"), [
    ("0:3;1:4", "places 7 layers but the model has 8"),
    ("2:8", "names '2', which is not a device here"),
    ("cuda:7:8", "not a device here"),
    ("zero:8", "is not DEVICE:LAYERS"),
    ({"cuda:0": -1, "cuda:1": 9}, "give a count from 0 to"),
])
def test_a_bad_explicit_map_names_the_entry(spec: object, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_device_map(spec, 8, [*_gpus(1, 1), CPU])


def _runtime(backends: list, devices: list[Device], environ: dict[str, str] | None = None) -> SimpleNamespace:
    comm = SimpleNamespace(rank=0, world_size=2, device="cuda:1")
    return SimpleNamespace(collective_backends=backends, devices=devices, device=devices[0],
                           communicator=lambda: comm, environ=environ or {})


def test_the_mode_in_force_and_the_plan() -> None:
    nccl = SimpleNamespace(feature="nccl", one_device_per_rank=True)
    ring = SimpleNamespace(feature="ring")
    gpus = _gpus(40, 40)
    assert device_mapping_mode([nccl], gpus)[0] == "disabled"
    assert device_mapping_mode([ring], gpus)[0] == "auto"
    assert device_mapping_mode([], [CPU])[0] == "single"
    # Under NCCL each process keeps every layer on its own GPU; an explicit map is a contradiction.
    plan = plan_device_map(_runtime([nccl], gpus), 4, GiB)
    assert plan.mode == "disabled" and plan.layers == ("cuda:1",) * 4
    with pytest.raises(ConfigError, match=r"nccl is active: one process per device.*drop the device map"):
        plan_device_map(_runtime([nccl], gpus), 4, GiB, override="0:4")
    assert plan_device_map(_runtime([ring], gpus), 4, GiB).mode == "auto"
    assert plan_device_map(_runtime([ring], gpus), 4, GiB, override="1:4").layers == ("cuda:1",) * 4
    assert plan_device_map(_runtime([], [CPU]), 4, GiB).layers == ("cpu",) * 4


def test_ranks_sharing_a_machine_each_keep_their_own_device() -> None:
    # Two ranks on one 2-GPU machine over ring (no NCCL): each computes on its LOCAL_RANK-th GPU, so spreading
    # every rank's layers over both GPUs would double-book them.
    ring = SimpleNamespace(feature="ring")
    gpus = _gpus(40, 40)
    mode, reason = device_mapping_mode([ring], gpus, {"LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert mode == "disabled" and "2 ranks share this machine (LOCAL_WORLD_SIZE=2)" in reason
    assert device_mapping_mode([ring], gpus, {"LOCAL_WORLD_SIZE": "1"})[0] == "auto"  # one process per machine
    runtime = _runtime([ring], gpus, {"LOCAL_WORLD_SIZE": "2"})
    runtime.device = gpus[1]  # the runtime's default on LOCAL_RANK 1
    runtime.communicator = lambda: SimpleNamespace(rank=1, world_size=2, device="cpu")  # gloo moves host tensors
    plan = plan_device_map(runtime, 4, GiB)
    assert plan.mode == "disabled" and plan.layers == ("cuda:1",) * 4
    with pytest.raises(ConfigError, match="MISTRALRS_DEVICE_LAYERS='0:4' is set, but 2 ranks share this machine"):
        plan_device_map(_runtime([ring], gpus, {"LOCAL_WORLD_SIZE": "2", "MISTRALRS_DEVICE_LAYERS": "0:4"}), 4, GiB)


def test_the_explicit_map_can_come_from_the_environment() -> None:
    ring = SimpleNamespace(feature="ring")
    nccl = SimpleNamespace(feature="nccl", one_device_per_rank=True)
    gpus = [*_gpus(40, 40), CPU]
    plan = plan_device_map(_runtime([ring], gpus, {"MISTRALRS_DEVICE_LAYERS": "0:1;1:3"}), 4, GiB)
    assert plan.mode == "explicit" and plan.layers == ("cuda:0", "cuda:1", "cuda:1", "cuda:1")
    # The program's own override wins over the variable.
    assert plan_device_map(_runtime([ring], gpus, {"MISTRALRS_DEVICE_LAYERS": "0:4"}), 4, GiB,
                           override="1:4").layers == ("cuda:1",) * 4
    assert plan_device_map(_runtime([ring], gpus, {"MISTRALRS_DEVICE_LAYERS": "  "}), 4, GiB).mode == "auto"
    with pytest.raises(ConfigError, match=r"MISTRALRS_DEVICE_LAYERS='0:1;1:2': the device map places 3 layers but "
                                          r"the model has 4"):
        plan_device_map(_runtime([ring], gpus, {"MISTRALRS_DEVICE_LAYERS": "0:1;1:2"}), 4, GiB)
    with pytest.raises(ConfigError, match=r"MISTRALRS_DEVICE_LAYERS='7:4': device map names '7', which is not a "
                                          r"device here: devices are cuda:0, cuda:1, cpu"):
        plan_device_map(_runtime([ring], gpus, {"MISTRALRS_DEVICE_LAYERS": "7:4"}), 4, GiB)
    with pytest.raises(ConfigError, match=r"MISTRALRS_DEVICE_LAYERS='0:4' is set, but nccl is active.*drop the "
                                          r"device map"):
        plan_device_map(_runtime([nccl], gpus, {"MISTRALRS_DEVICE_LAYERS": "0:4"}), 4, GiB)


def test_the_light_modules_import_no_torch(run_python) -> None:
    result = run_python("""
        import sys
        from mistralrs_torch.parallel import auto_device_map, torchrun_rendezvous, collective_timeouts, Rendezvous
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
        """)
    assert result.returncode == 0, result.stderr


# -- rendezvous helpers -------------------------------------------------------------------------------------


def test_torchrun_variables() -> None:
    assert torchrun_rendezvous({}) is None
    r = torchrun_rendezvous({"RANK": "2", "WORLD_SIZE": "4", "MASTER_ADDR": "node1", "MASTER_PORT": "29500",
                             "LOCAL_RANK": "0"})
    assert (r.rank, r.world_size, r.master_addr, r.master_port, r.local_rank, r.hosts_store) == \
        (2, 4, "node1", 29500, 0, False)


@pytest.mark.parametrize(("environ", "words"), [
    ({"RANK": "0"}, "WORLD_SIZE, MASTER_ADDR, MASTER_PORT are not set"),
    ({"RANK": "4", "WORLD_SIZE": "4", "MASTER_ADDR": "a", "MASTER_PORT": "1"}, "RANK=4 is outside 0..3"),
    ({"RANK": "0", "WORLD_SIZE": "0", "MASTER_ADDR": "a", "MASTER_PORT": "1"}, "WORLD_SIZE=0 is outside 1.."),
    ({"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "a b", "MASTER_PORT": "1"}, "neither an IP address"),
    ({"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "a", "MASTER_PORT": "1", "LOCAL_RANK": "-1"}, "LOCAL_RANK"),
])
def test_bad_torchrun_variables_name_the_variable(environ: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        torchrun_rendezvous(environ)


def test_timeouts_are_finite_and_positive() -> None:
    assert collective_timeouts({}) == Timeouts(DEFAULT_TIMEOUT, DEFAULT_TIMEOUT)
    assert collective_timeouts({"MISTRALRS_COLLECTIVE_TIMEOUT": "2.5", "MISTRALRS_RENDEZVOUS_TIMEOUT": "60"}) == \
        Timeouts(2.5, 60.0)
    for bad in ("0", "-1", "inf", "nan", "never", "1e999"):
        with pytest.raises(ConfigError, match="never wait forever"):
            collective_timeouts({"MISTRALRS_COLLECTIVE_TIMEOUT": bad})


def test_address_helpers() -> None:
    assert all(map(is_loopback, ["localhost", "127.0.0.1", "127.1.2.3", "::1", "[::1]"]))
    assert not any(map(is_loopback, ["10.0.0.1", "example.com", ""]))
    assert all(map(valid_host, ["10.0.0.1", "::1", "node-1.cluster.local", "gpu7"]))
    assert not any(map(valid_host, ["", "a b", "-bad", "1.2.3", "x" * 300]))
    assert [n for n in range(20) if is_power_of_two(n)] == [1, 2, 4, 8, 16]
