"""System snapshots: JSON round trips, named profiles, snapshot files and CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from mistralrs_torch import GPU, ConfigError, SystemProfileError, SystemSnapshot, load_system, probe_system
from mistralrs_torch.system import PROFILE_NAMES, SCHEMA, hardware_classes, visible_device_filter

SHIPPED_PROFILES = ("h100", "h100-fa2", "a100", "v100", "rtx4090-windows", "multi-gpu-8xh100", "multi-gpu-4xa100",
                    "apple-m2", "intel-mac-amd", "xeon-cpu", "epyc-cpu")


def _write(tmp_path: Path, data, name: str = "box.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def test_the_named_profiles_are_shipped() -> None:
    assert set(SHIPPED_PROFILES) <= set(PROFILE_NAMES)


@pytest.mark.parametrize("name", SHIPPED_PROFILES)
def test_every_profile_round_trips_through_json(name) -> None:
    system = load_system(name)
    assert system.source == name
    data = system.to_json()
    assert data["schema"] == SCHEMA
    assert SystemSnapshot.from_json(data) == system
    text = system.dumps()
    assert SystemSnapshot.from_json(json.loads(text)) == system
    assert json.loads(text) == json.loads(SystemSnapshot.from_json(json.loads(text)).dumps())


@pytest.mark.parametrize("name", SHIPPED_PROFILES)
def test_profiles_hold_well_formed_facts(name) -> None:
    system = load_system(name)
    assert system.os in ("linux", "windows", "macos")
    assert system.cpu.vendor in ("intel", "amd", "apple")
    assert system.torch is not None
    for index, gpu in enumerate(system.gpus):
        assert gpu.index == index
        assert gpu.vendor in ("nvidia", "apple", "amd")
        if gpu.vendor == "nvidia":
            cc = gpu.compute_capability
            assert isinstance(cc, tuple) and len(cc) == 2 and all(isinstance(v, int) for v in cc)


def test_profile_hardware_matches_the_profile_names() -> None:
    assert load_system("h100").gpus[0].compute_capability == (9, 0)
    assert "flash_attn_interface" in load_system("h100").modules
    assert "flash_attn_interface" not in load_system("h100-fa2").modules
    assert load_system("v100").gpus[0].compute_capability == (7, 0)
    assert len(load_system("multi-gpu-8xh100").gpus_of("nvidia")) == 8
    assert (load_system("rtx4090-windows").os, load_system("apple-m2").os) == ("windows", "macos")
    assert load_system("apple-m2").arch == "arm64"
    assert load_system("epyc-cpu").cpu.vendor == "amd"
    assert load_system("xeon-cpu").cpu.vendor == "intel"
    assert load_system("xeon-cpu").gpus == ()


def test_the_probed_machine_round_trips_through_json() -> None:
    system = probe_system(environ={})
    assert system.source == "this machine"
    assert SystemSnapshot.from_json(json.loads(system.dumps())) == system


def test_a_snapshot_file_loads_with_its_path_as_source(tmp_path) -> None:
    path = _write(tmp_path, load_system("a100").to_json())
    system = load_system(str(path))
    assert system.source == str(path)
    assert dataclasses.replace(system, source="a100") == load_system("a100")


def test_an_unknown_profile_name_suggests_the_closest_one() -> None:
    with pytest.raises(SystemProfileError) as caught:
        load_system("h10")
    message = str(caught.value)
    assert "'h10'" in message
    assert "did you mean 'h100'?" in message
    for name in SHIPPED_PROFILES:
        assert name in message
    assert "plugins system --json" in message


def test_a_name_far_from_every_profile_lists_them_without_a_guess() -> None:
    with pytest.raises(SystemProfileError) as caught:
        load_system("zzzzzz")
    assert "did you mean" not in str(caught.value)
    assert "epyc-cpu" in str(caught.value)


def test_system_profile_error_is_a_config_error() -> None:
    assert issubclass(SystemProfileError, ConfigError)


def test_invalid_json_names_the_line(tmp_path) -> None:
    path = _write(tmp_path, '{\n  "schema": "mistralrs.system/1",\n  "os": linux\n}\n')
    with pytest.raises(SystemProfileError) as caught:
        load_system(str(path))
    message = str(caught.value)
    assert "not valid JSON" in message
    assert "line 3" in message
    assert str(path) in message


def test_a_json_value_that_is_not_an_object_is_rejected(tmp_path) -> None:
    with pytest.raises(SystemProfileError, match="JSON object"):
        load_system(str(_write(tmp_path, "[1, 2]")))


@pytest.mark.parametrize("schema", [None, "mistralrs.system/0", "mistralrs.system/2", "other"])
def test_a_wrong_schema_is_rejected_with_the_expected_one(tmp_path, schema) -> None:
    data = load_system("h100").to_json()
    if schema is None:
        data.pop("schema")
    else:
        data["schema"] = schema
    with pytest.raises(SystemProfileError) as caught:
        load_system(str(_write(tmp_path, data)))
    assert repr(SCHEMA) in str(caught.value)
    assert "plugins system --json" in str(caught.value)


@pytest.mark.parametrize("change", [
    lambda d: d.update(unknown_field=1),
    lambda d: d["cpu"].update(speed="fast"),
    lambda d: d["gpus"][0].pop("name"),
    lambda d: d.update(gpus=[{"index": 0}]),
    lambda d: d.update(torch="2.11"),
    lambda d: d.update(libraries=["cuda"]),
    lambda d: d.update(cpu=None),
    lambda d: d.update(gpus=None),
])
def test_a_malformed_snapshot_is_a_profile_error(change) -> None:
    data = json.loads(load_system("h100").dumps())
    change(data)
    with pytest.raises(SystemProfileError, match="malformed"):
        SystemSnapshot.from_json(data, source="box.json")


@pytest.mark.parametrize("cc", ["9.0", [9], [9, 0, 1], ["9", "0"], 9],
                         ids=["text", "one-int", "three-ints", "strings", "bare-int"])
def test_a_malformed_compute_capability_is_a_profile_error(cc) -> None:
    # A compute capability that is not two integers must be refused when the file is read,
    # not crash resolution later ("'<' not supported between 'str' and 'int'").
    data = json.loads(load_system("v100").dumps())
    data["gpus"][0]["compute_capability"] = cc
    with pytest.raises(SystemProfileError):
        SystemSnapshot.from_json(data, source="box.json")


def test_an_unreadable_snapshot_path_is_a_profile_error(tmp_path) -> None:
    folder = tmp_path / "folder.json"
    folder.mkdir()
    with pytest.raises(SystemProfileError):
        load_system(str(folder))


def test_snapshots_are_frozen() -> None:
    system = load_system("h100")
    with pytest.raises(dataclasses.FrozenInstanceError):
        system.os = "macos"  # type: ignore[misc]  # writing to a frozen object on purpose: the refusal is what is tested
    with pytest.raises(TypeError):
        system.libraries["cuda"] = "0"  # type: ignore[index]  # writing to a frozen object on purpose: the refusal is what is tested
    with pytest.raises(dataclasses.FrozenInstanceError):
        system.gpus[0].name = "x"  # type: ignore[misc]  # writing to a frozen object on purpose: the refusal is what is tested


def test_with_facts_adds_libraries_and_notes_without_touching_the_original() -> None:
    system = load_system("xeon-cpu")
    richer = system.with_facts({"rocm": "6.2"}, ("a note",))
    assert richer.libraries["rocm"] == "6.2"
    assert richer.notes[-1] == "a note"
    assert "rocm" not in system.libraries
    assert richer.libraries["mkl"] == system.libraries["mkl"]


def test_gpus_of_filters_by_vendor() -> None:
    assert load_system("apple-m2").gpus_of("nvidia") == ()
    assert len(load_system("apple-m2").gpus_of("apple")) == 1
    assert load_system("h100").gpus_of("apple") == ()


@pytest.mark.parametrize(("cc", "label"), [((8, 6), "8.6"), ((10, 0), "10.0"), (None, "n/a")])
def test_compute_capability_labels(cc, label) -> None:
    assert GPU(index=0, name="g", vendor="nvidia", compute_capability=cc).cc_label == label


# --- CUDA_VISIBLE_DEVICES --------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("1,0", ["1", "0"]),
    ("0", ["0"]),
    ("GPU-abc", ["GPU-abc"]),
    ("GPU-abc,1", ["GPU-abc", "1"]),
    ("MIG-123", ["MIG-123"]),
    ("0,x,1", ["0"]),
    ("x,0", []),
    ("-1", []),
    ("", []),
    (" 0 , 1 ", ["0", "1"]),
])
def test_visible_device_filter_reads_cuda_visible_devices_as_cuda_does(value, expected) -> None:
    assert visible_device_filter({"CUDA_VISIBLE_DEVICES": value}) == expected


def test_visible_device_filter_is_none_when_unset() -> None:
    assert visible_device_filter({}) is None


# --- Hardware classes (the seed's "recommended combinations by hardware" rows) ------------------------


@pytest.mark.parametrize(("profile", "classes"), [
    ("h100", ("nvidia-hopper",)),
    ("h100-fa2", ("nvidia-hopper",)),
    ("a100", ("nvidia-ampere",)),
    ("rtx4090-windows", ("nvidia-ampere",)),
    ("v100", ("nvidia-older",)),
    ("multi-gpu-8xh100", ("nvidia-hopper", "multi-gpu-nvidia")),
    ("multi-gpu-4xa100", ("nvidia-ampere", "multi-gpu-nvidia")),
    ("apple-m2", ("apple-silicon",)),
    ("intel-mac-amd", ("apple-silicon",)),
    ("xeon-cpu", ("intel-cpu",)),
    ("epyc-cpu", ("generic-cpu",)),
])
def test_profiles_fall_into_one_base_row_and_the_rows_that_add_to_it(profile, classes) -> None:
    assert hardware_classes(load_system(profile)) == classes


def test_every_shipped_profile_is_listed_above() -> None:
    import inspect

    listed = inspect.getsource(test_profiles_fall_into_one_base_row_and_the_rows_that_add_to_it)
    assert all(f'"{name}"' in listed for name in PROFILE_NAMES)


@pytest.mark.parametrize(("environ", "multi_node"), [
    ({}, False),
    ({"RING_CONFIG": "ring.json"}, True),
    ({"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"}, True),  # torchrun over two machines
    ({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "8"}, False),  # torchrun on this machine alone
    ({"WORLD_SIZE": "8"}, False),
    ({"SLURM_JOB_NUM_NODES": "2"}, True),
    ({"SLURM_NNODES": "1"}, False),
    ({"WORLD_SIZE": "²", "LOCAL_WORLD_SIZE": "1"}, False),
])
def test_a_multi_node_run_adds_the_multi_node_row(environ, multi_node) -> None:
    classes = hardware_classes(load_system("a100"), environ)
    assert classes == (("nvidia-ampere", "multi-node") if multi_node else ("nvidia-ampere",))


def test_mixed_nvidia_generations_take_the_row_every_gpu_can_run() -> None:
    data = json.loads(json.dumps(load_system("multi-gpu-8xh100").to_json()))
    data["gpus"][1]["compute_capability"] = [8, 0]
    assert hardware_classes(SystemSnapshot.from_json(data)) == ("nvidia-ampere", "multi-gpu-nvidia")
    data["gpus"][2]["compute_capability"] = [7, 0]
    assert hardware_classes(SystemSnapshot.from_json(data)) == ("nvidia-older", "multi-gpu-nvidia")
    data = json.loads(json.dumps(load_system("h100").to_json()))
    data["gpus"][0]["compute_capability"] = [10, 0]  # Blackwell: FlashAttention-2, not 3
    assert hardware_classes(SystemSnapshot.from_json(data)) == ("nvidia-ampere",)


def test_an_intel_mac_without_a_metal_gpu_is_a_generic_cpu() -> None:
    data = json.loads(json.dumps(load_system("intel-mac-amd").to_json()))
    data["gpus"] = []
    assert hardware_classes(SystemSnapshot.from_json(data)) == ("generic-cpu",)


SYSTEM_PROFILER = json.dumps({"SPDisplaysDataType": [
    {"_name": "Intel UHD Graphics 630", "sppci_model": "Intel UHD Graphics 630", "spdisplays_vendor": "Intel",
     "spdisplays_vram": "1536 MB"},
    {"_name": "AMD Radeon Pro 5500M", "sppci_model": "AMD Radeon Pro 5500M", "spdisplays_vendor": "sppci_vendor_amd",
     "spdisplays_vram": "8 GB"},
]})


def test_an_intel_macs_amd_gpu_is_read_from_system_profiler() -> None:
    from mistralrs_torch.system._probe import mac_amd_gpus

    assert mac_amd_gpus(SYSTEM_PROFILER) == [GPU(index=0, name="AMD Radeon Pro 5500M", vendor="amd",
                                                 memory_total=8 * 1024**3)]
    assert mac_amd_gpus("not json") == mac_amd_gpus("[]") == mac_amd_gpus('{"SPDisplaysDataType": "x"}') == []
