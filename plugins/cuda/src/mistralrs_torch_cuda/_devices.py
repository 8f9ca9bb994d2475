"""The cuda devices as torch numbers them (imports torch)."""

from __future__ import annotations

import torch

from mistralrs_torch.ops import Device
from mistralrs_torch.system import SystemSnapshot


def cuda_devices(system: SystemSnapshot) -> tuple[Device, ...]:
    """One Device per GPU torch can use, in torch's order (after CUDA_VISIBLE_DEVICES).

    CUDA honours CUDA_VISIBLE_DEVICES (indices or UUIDs) itself, so torch's count and
    numbering are the truth. Name, compute capability and total memory come from torch
    without creating a context; free memory comes from the NVML facts of the snapshot,
    matched by UUID because NVML numbers GPUs in PCI order while CUDA, by default, puts
    the fastest first (torch.cuda.mem_get_info would create a context on every GPU).
    """
    if not torch.cuda.is_available():
        return ()
    by_uuid = {g.uuid: g for g in system.gpus_of("nvidia") if g.uuid}
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        uuid = str(getattr(props, "uuid", ""))
        known = by_uuid.get(uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")
        devices.append(Device(f"cuda:{index}", f"{props.name} (compute capability {props.major}.{props.minor})",
                              "cuda", int(props.total_memory), known.memory_free if known is not None else None))
    return tuple(devices)
