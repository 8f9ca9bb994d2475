"""The few NVML calls the cheap probe needs, through ctypes.

NVML reports GPUs without creating a CUDA context. The nvidia-ml-py binding
takes about 100 ms to import, more than all other probes together, so the
seven calls used here are bound directly; a missing driver is one failed dlopen.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any


class NVMLError(Exception):
    """NVML is absent or answered an error code."""


@dataclass(frozen=True)
class NVMLDevice:
    """One physical GPU as NVML numbers it (ignoring CUDA_VISIBLE_DEVICES)."""

    index: int
    name: str
    uuid: str
    compute_capability: tuple[int, int]
    memory_total: int
    memory_free: int


#: Where a loaded NVIDIA kernel driver shows itself on Linux (containers get /dev/nvidiactl passed in).
_LINUX_DRIVER_MARKERS = ("/proc/driver/nvidia", "/dev/nvidiactl")


def _library() -> Any:
    if sys.platform.startswith("linux") and not any(map(os.path.exists, _LINUX_DRIVER_MARKERS)):
        # No driver: skip importing ctypes and a dlopen search (start-up matters).
        raise NVMLError("no NVIDIA driver loaded (/proc/driver/nvidia and /dev/nvidiactl are absent)")
    import ctypes

    name = "nvml.dll" if sys.platform == "win32" else "libnvidia-ml.so.1"
    try:
        return ctypes.CDLL(name)
    except OSError as exc:
        raise NVMLError(f"{name} not found (no NVIDIA driver installed)") from exc


def query_nvml() -> tuple[str, str, list[NVMLDevice]]:
    """(driver version, CUDA driver API version, devices); raises NVMLError when NVML is unusable."""
    lib = _library()
    import ctypes

    class _Memory(ctypes.Structure):
        _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]

    def call(function: str, *args: object) -> None:
        code = getattr(lib, function)(*args)
        if code != 0:
            raise NVMLError(f"{function} failed with NVML error {code}")

    call("nvmlInit_v2")
    try:
        text = ctypes.create_string_buffer(96)
        call("nvmlSystemGetDriverVersion", text, ctypes.c_uint(96))
        driver = text.value.decode()
        cuda = ctypes.c_int()
        call("nvmlSystemGetCudaDriverVersion", ctypes.byref(cuda))
        count = ctypes.c_uint()
        call("nvmlDeviceGetCount_v2", ctypes.byref(count))
        devices = []
        for index in range(count.value):
            handle = ctypes.c_void_p()
            call("nvmlDeviceGetHandleByIndex_v2", ctypes.c_uint(index), ctypes.byref(handle))
            call("nvmlDeviceGetName", handle, text, ctypes.c_uint(96))
            name = text.value.decode()
            call("nvmlDeviceGetUUID", handle, text, ctypes.c_uint(96))
            uuid = text.value.decode()
            major, minor = ctypes.c_int(), ctypes.c_int()
            call("nvmlDeviceGetCudaComputeCapability", handle, ctypes.byref(major), ctypes.byref(minor))
            memory = _Memory()
            call("nvmlDeviceGetMemoryInfo", handle, ctypes.byref(memory))
            devices.append(NVMLDevice(index, name, uuid, (major.value, minor.value), memory.total, memory.free))
    finally:
        lib.nvmlShutdown()
    return driver, f"{cuda.value // 1000}.{cuda.value % 1000 // 10}", devices
