"""Device mapping: which device holds which layer when one process drives several devices.

With NCCL (or any collective backend that runs one process per device) every
process holds all its layers on its own device and mapping is off, as the seed
says ("When NCCL is enabled, automatic device mapping is disabled";
MISTRALRS_NO_NCCL=1 turns it back on). Otherwise, with several accelerators
visible, layers are spread over them in proportion to their free memory, or
as an explicit map says. Pure Python: the runtime's devices carry the memory
figures the devices hooks read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mistralrs_torch._errors import ConfigError
from mistralrs_torch.ops import Device
from mistralrs_torch.parallel._rendezvous import launched_ranks_here
from mistralrs_torch.validation import shown

_GiB = 1024**3
#: Fraction of each device's free memory left for activations, the KV cache and allocator slack.
DEFAULT_HEADROOM = 0.1


@dataclass(frozen=True)
class DeviceMap:
    """The device of every layer, how the map was made ("single", "auto", "explicit", "disabled") and why."""

    layers: tuple[str, ...]
    mode: str
    reason: str

    def device_for(self, layer: int) -> str:
        return self.layers[layer]

    def summary(self) -> str:
        """ "cuda:0: layers 0-15; cuda:1: layers 16-31" """
        parts: list[str] = []
        start = 0
        for i in range(1, len(self.layers) + 1):
            if i == len(self.layers) or self.layers[i] != self.layers[start]:
                span = f"layer {start}" if i - 1 == start else f"layers {start}-{i - 1}"
                parts.append(f"{self.layers[start]}: {span}")
                start = i
        return "; ".join(parts) if parts else "no layers"


def device_mapping_mode(collective_backends: Sequence[Any], devices: Sequence[Device],
                        environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """("disabled" | "auto" | "single", why) for the bound collective backends, devices and environment.

    A collective backend that declares ``one_device_per_rank = True`` (NCCL)
    gives each process exactly one device, so mapping layers across devices is
    off; so it is when several ranks share this machine (the launcher's
    LOCAL_WORLD_SIZE > 1, as torchrun and ``mistralrs launch`` set it), each
    computing on its own device (LOCAL_RANK), whatever the collective backend.
    """
    owner = next((b for b in collective_backends if getattr(b, "one_device_per_rank", False)), None)
    if owner is not None:
        return "disabled", (f"{owner.feature} is active: one process per device, each holding its own shard "
                            "(tensor parallelism), so layers are not mapped across devices")
    sharing = launched_ranks_here(environ or {})
    if sharing is not None and sharing > 1:
        return "disabled", (f"{sharing} ranks share this machine (LOCAL_WORLD_SIZE={sharing}): each computes on its "
                            "own device (LOCAL_RANK), so layers are not mapped across devices")
    accelerators = [d for d in devices if not d.torch_device.startswith("cpu")]
    if len(accelerators) > 1:
        return "auto", (f"{len(accelerators)} devices visible: layers are spread over "
                        f"{', '.join(d.torch_device for d in accelerators)} in proportion to their free memory")
    only = (accelerators or list(devices))[0].torch_device if devices else "cpu"
    return "single", f"one device ({only}) holds every layer"


def _free(device: Device) -> int:
    return device.memory_free if device.memory_free is not None else device.memory_total


def _sizes(num_layers: int, layer_bytes: int | Sequence[int]) -> list[int]:
    if num_layers < 1:
        raise ConfigError(f"a device map needs at least one layer, got {num_layers}")
    sizes = [int(layer_bytes)] * num_layers if isinstance(layer_bytes, int) else [int(b) for b in layer_bytes]
    if len(sizes) != num_layers or any(b < 0 for b in sizes):
        raise ConfigError(f"layer sizes must be {num_layers} byte counts >= 0, got {len(sizes)}")
    return sizes


def auto_device_map(num_layers: int, layer_bytes: int | Sequence[int], devices: Sequence[Device], *,
                    headroom: float = DEFAULT_HEADROOM, cpu_offload: bool = True) -> DeviceMap:
    """Contiguous runs of layers per accelerator, in proportion to each one's free memory (minus ``headroom``).

    Layers that fit nowhere go to the CPU when ``cpu_offload`` (and a CPU device is given), else ConfigError.
    """
    sizes = _sizes(num_layers, layer_bytes)
    accelerators = [d for d in devices if not d.torch_device.startswith("cpu")]
    cpu = next((d.torch_device for d in devices if d.torch_device.startswith("cpu")), None)
    if not accelerators:
        return DeviceMap((cpu or "cpu",) * num_layers, "single", "no accelerator: every layer on the CPU")
    capacity = [int(_free(d) * (1 - headroom)) for d in accelerators]
    total, room = sum(sizes), sum(capacity)
    # A layer goes to the device whose share of the total (by capacity) contains the layer's midpoint: each
    # device gets a load proportional to its free memory, and layers stay contiguous.
    fitted = min(total, room)
    bounds, acc = [], 0
    for c in capacity:
        acc += c
        bounds.append(fitted * acc / room if room else 0)
    layers: list[str] = []
    used = [0] * len(accelerators)
    offset = 0
    floor = 0  # devices fill in order: a layer never goes back to a device before the last one used
    for size in sizes:
        middle = offset + size / 2
        index = next((i for i, b in enumerate(bounds) if middle <= b), None)
        if index is not None:  # that device, or the next one from there with room for the layer
            index = next((i for i in range(max(index, floor), len(accelerators)) if used[i] + size <= capacity[i]),
                         None)
        if index is None:
            if not (cpu_offload and cpu):
                need = (total - sum(used)) / _GiB
                raise ConfigError(
                    f"the model's {num_layers} layers ({total / _GiB:.1f} GiB) do not fit the free memory of "
                    f"{', '.join(f'{d.torch_device} ({_free(d) / _GiB:.1f} GiB free)' for d in accelerators)} "
                    f"with {headroom:.0%} headroom: {need:.1f} GiB are left over: free memory on the devices, "
                    "use more devices, or allow CPU offload")
            layers.append(cpu)
            offset += size
            continue
        used[index] += size
        floor = index
        layers.append(accelerators[index].torch_device)
        offset += size
    spilled = layers.count(cpu) if cpu else 0
    reason = "in proportion to free memory: " + ", ".join(
        f"{d.torch_device} {_free(d) / _GiB:.1f} GiB free" for d in accelerators)
    if spilled:
        reason += f"; {spilled} layer(s) did not fit and run on the CPU"
    return DeviceMap(tuple(layers), "auto", reason)


_ENTRY = re.compile(r"^\s*([A-Za-z]+:[0-9]{1,4}|[0-9]{1,4}|cpu)\s*:\s*([0-9]{1,6})\s*$")
#: More layers than any model has: a map placing more is refused before a list of them is built.
MAX_LAYERS = 100_000
#: The explicit map from the environment, used when the program passes none.
DEVICE_LAYERS_VAR = "MISTRALRS_DEVICE_LAYERS"


def device_map_entries(spec: str | Mapping[str, int], devices: Sequence[Device]) -> list[tuple[str, int]]:
    """(device, layer count) per entry of an explicit map, each device checked against ``devices``."""
    accelerators = [d.torch_device for d in devices if not d.torch_device.startswith("cpu")]
    known = accelerators + [d.torch_device for d in devices if d.torch_device.startswith("cpu")]
    if isinstance(spec, str):
        entries = []
        for part in (p for p in spec.replace(",", ";").split(";") if p.strip()):
            match = _ENTRY.match(part)
            if match is None:
                raise ConfigError(f"device map entry {shown(part.strip())} is not DEVICE:LAYERS: write e.g. "
                                  "'0:16;1:16' or 'cuda:0:16;cuda:1:16'")
            entries.append((match.group(1), int(match.group(2))))
    else:
        entries = list(spec.items())
    resolved = []
    for name, count in entries:
        ordinal = isinstance(name, str) and name.isascii() and name.isdigit() and len(name) <= 4
        device = accelerators[int(name)] if ordinal and int(name) < len(accelerators) \
            else name
        if device not in known:
            raise ConfigError(f"device map names {shown(name)}, which is not a device here: devices are "
                              f"{', '.join(known) or 'none'} (accelerator ordinals 0..{len(accelerators) - 1})")
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_LAYERS:
            raise ConfigError(f"device map gives {device} {shown(count)} layers: give a count from 0 to {MAX_LAYERS}")
        resolved.append((device, count))
    if not resolved:
        raise ConfigError("the device map is empty: write e.g. '0:16;1:16'")
    if sum(count for _, count in resolved) > MAX_LAYERS:
        raise ConfigError(f"the device map places {sum(count for _, count in resolved)} layers, more than any model "
                          f"has ({MAX_LAYERS} at most): give each device its share of the model's layers")
    return resolved


def parse_device_map(spec: str | Mapping[str, int], num_layers: int, devices: Sequence[Device]) -> DeviceMap:
    """An explicit map: layer counts per device in order, "0:16;1:16" (accelerator ordinals, as mistral.rs
    writes them), "cuda:0:16;cuda:1:16" or {"cuda:0": 16, "cuda:1": 16}. The counts must add up to the layers."""
    layers = [device for device, count in device_map_entries(spec, devices) for _ in range(count)]
    if len(layers) != num_layers:
        raise ConfigError(f"the device map places {len(layers)} layers but the model has {num_layers}: "
                          f"make the counts add up to {num_layers}")
    return DeviceMap(tuple(layers), "explicit", "the explicit device map given")


def plan_device_map(runtime: Any, num_layers: int, layer_bytes: int | Sequence[int],
                    override: str | Mapping[str, int] | None = None, *, headroom: float = DEFAULT_HEADROOM,
                    cpu_offload: bool = True) -> DeviceMap:
    """The device map for a runtime: off under NCCL-style backends, else ``override`` (or, when the program
    gives none, MISTRALRS_DEVICE_LAYERS from the runtime's environment) or the automatic map."""
    source = "an explicit device map was given"
    if override is None:
        override = runtime.environ.get(DEVICE_LAYERS_VAR, "").strip() or None
        source = f"{DEVICE_LAYERS_VAR}={shown(override)} is set"
    mode, reason = device_mapping_mode(runtime.collective_backends, runtime.devices, runtime.environ)
    if mode == "disabled":
        if override is not None:
            raise ConfigError(f"{source}, but {reason}: drop the device map, or run one process for all the devices "
                              "(`mistralrs doctor` shows the mode in force)")
        from mistralrs_torch.parallel._tensor_parallel import rank_device

        return DeviceMap((rank_device(runtime, runtime.communicator()),) * num_layers, "disabled", reason)
    if override is not None:
        try:
            return parse_device_map(override, num_layers, runtime.devices)
        except ConfigError as exc:
            if source.startswith(DEVICE_LAYERS_VAR):
                raise ConfigError(f"{DEVICE_LAYERS_VAR}={shown(override)}: {exc}") from None
            raise
    if mode == "single":
        _sizes(num_layers, layer_bytes)
        return DeviceMap((runtime.device.torch_device,) * num_layers, "single", reason)
    return auto_device_map(num_layers, layer_bytes, runtime.devices, headroom=headroom, cpu_offload=cpu_offload)
