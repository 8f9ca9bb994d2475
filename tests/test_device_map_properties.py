"""Property-based tests of the automatic device map (hypothesis): whatever the layer sizes and free memory,
every layer is placed once, no accelerator is given more than its capacity, each device holds one contiguous
run of layers in device order, and a model that cannot fit without the CPU is refused when offload is off."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mistralrs_torch import ConfigError
from mistralrs_torch.ops import Device
from mistralrs_torch.parallel import auto_device_map

MiB = 1 << 20
CPU = Device("cpu", "cpu", "cpu", 1 << 40)
PROPERTY = settings(max_examples=400, deadline=None, derandomize=True, database=None)

_free = st.lists(st.integers(0, 4096), min_size=1, max_size=4)  # MiB free per GPU
_layers = st.lists(st.integers(0, 512), min_size=1, max_size=40)  # MiB per layer
_headroom = st.sampled_from((0.0, 0.1, 0.25))


def _gpus(free_mib: list[int]) -> list[Device]:
    return [Device(f"cuda:{i}", "GPU", "cuda", 8192 * MiB, f * MiB) for i, f in enumerate(free_mib)]


def _runs(layers: tuple[str, ...]) -> list[str]:
    """The devices in the order their runs of layers appear (a device twice means a split run)."""
    runs: list[str] = []
    for device in layers:
        if not runs or runs[-1] != device:
            runs.append(device)
    return runs


@PROPERTY
@given(free=_free, sizes=_layers, headroom=_headroom)
def test_every_layer_is_placed_within_each_accelerators_capacity(free: list[int], sizes: list[int],
                                                                 headroom: float) -> None:
    gpus = _gpus(free)
    plan = auto_device_map(len(sizes), [s * MiB for s in sizes], [*gpus, CPU], headroom=headroom)
    assert len(plan.layers) == len(sizes)
    assert set(plan.layers) <= {g.torch_device for g in gpus} | {"cpu"}
    for gpu, mib in zip(gpus, free, strict=True):
        placed = sum(s for s, device in zip(sizes, plan.layers, strict=True) if device == gpu.torch_device) * MiB
        assert placed <= int(mib * MiB * (1 - headroom)), (gpu.torch_device, plan.layers)


@PROPERTY
@given(free=_free, sizes=_layers, headroom=_headroom)
def test_each_device_holds_one_contiguous_run_in_device_order(free: list[int], sizes: list[int],
                                                              headroom: float) -> None:
    plan = auto_device_map(len(sizes), [s * MiB for s in sizes], [*_gpus(free), CPU], headroom=headroom)
    on_gpus = tuple(d for d in plan.layers if d != "cpu")
    runs = _runs(on_gpus)
    assert len(runs) == len(set(runs)), plan.layers  # no device's layers split in two
    assert runs == sorted(runs, key=lambda d: int(d.split(":")[1])), plan.layers


@PROPERTY
@given(free=_free, sizes=_layers)
def test_without_offload_a_model_that_needs_the_cpu_is_refused(free: list[int], sizes: list[int]) -> None:
    devices = [*_gpus(free), CPU]
    with_offload = auto_device_map(len(sizes), [s * MiB for s in sizes], devices)
    try:
        without = auto_device_map(len(sizes), [s * MiB for s in sizes], devices, cpu_offload=False)
    except ConfigError as exc:
        assert "cpu" in with_offload.layers and "do not fit" in str(exc)
    else:
        assert "cpu" not in without.layers and without.layers == with_offload.layers
