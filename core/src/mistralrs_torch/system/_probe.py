"""Cheap probes of this machine: no torch import, no CUDA context.

Facts come from the OS (platform, CPU flags, memory, the GPUs of a Mac), torch's
installed files (its version and build flags as text), NVML for NVIDIA GPUs, and
``find_spec`` for the modules manifests name. What a feature needs beyond that
(the cuDNN, NCCL or MKL a wheel carries, the Accelerate framework) its plugin
adds through ``mistralrs_probe_system``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Iterable, Mapping

from mistralrs_torch._distributions import installed_version
from mistralrs_torch.features import ModuleRequirement
from mistralrs_torch.system._nvml import NVMLError, query_nvml
from mistralrs_torch.system._snapshot import CPU, GPU, SystemSnapshot, TorchBuild


def probe_system(modules: Iterable[ModuleRequirement] = (), environ: Mapping[str, str] = os.environ) -> SystemSnapshot:
    """Probe this machine cheaply. ``modules`` are looked up with ``find_spec`` (never imported)."""
    os_name = _os_name()
    arch = _arch()
    torch = _torch_build()
    libraries: dict[str, str] = {}
    notes: list[str] = []
    if torch is not None and torch.cuda:
        libraries["cuda"] = torch.cuda
    if _on_path("nvcc"):
        libraries["nvcc"] = ""
    gpus: list[GPU] = []
    nvidia, driver, nvml_note = _nvidia_gpus(environ)
    gpus += nvidia
    libraries.update(driver)
    if nvml_note:
        notes.append(nvml_note)
    if os_name == "macos" and torch is not None:
        # torch's MPS backend drives Apple Silicon GPUs, and the AMD GPUs of Intel Macs.
        mac_gpus = [GPU(index=0, name=f"{_cpu(os_name).model} GPU", vendor="apple", memory_total=_memory())] \
            if arch == "arm64" else _mac_amd_gpus()
        if mac_gpus:
            libraries["mps"] = torch.version
            gpus += mac_gpus
    return SystemSnapshot(
        source="this machine",
        os=os_name,
        os_release=_uname()[0],
        arch=arch,
        python=sys.version.split()[0],
        cpu=_cpu(os_name),
        memory_total=_memory(),
        torch=torch,
        gpus=tuple(gpus),
        libraries=libraries,
        modules=module_versions(modules),
        notes=tuple(notes),
        local=True,
    )


def _os_name() -> str:
    if sys.platform.startswith("linux"):
        return "linux"
    if sys.platform == "darwin":
        return "macos"
    if sys.platform in ("win32", "cygwin"):
        return "windows"
    return sys.platform


def _uname() -> tuple[str, str]:
    """(OS release, machine), without importing platform (milliseconds of every `plugins list`) where
    os.uname answers."""
    if hasattr(os, "uname"):
        name = os.uname()
        return name.release, name.machine
    import platform

    return platform.release(), platform.machine()


def _processor() -> str:
    import platform

    return platform.processor() or "unknown"


def _arch() -> str:
    machine = _uname()[1].lower()
    return {"amd64": "x86_64", "x64": "x86_64", "aarch64": "arm64"}.get(machine, machine)


def _cpu(os_name: str) -> CPU:
    cores = os.cpu_count() or 1
    if os_name == "linux":
        return _linux_cpu(cores)
    if os_name == "macos":
        model = _sysctl("machdep.cpu.brand_string") or _processor()
        if _arch() == "arm64":
            return CPU(model=model, vendor="apple", cores=cores, flags=("neon",))
        flags = tuple(
            sorted(
                f.lower().replace(".", "_")
                for f in (_sysctl("machdep.cpu.features") + " " + _sysctl("machdep.cpu.leaf7_features")).split()
            )
        )
        return CPU(model=model, vendor=_vendor(model), cores=cores, flags=flags)
    model = _processor()
    return CPU(model=model, vendor=_vendor(model), cores=cores)


def _linux_cpu(cores: int) -> CPU:
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
            text = file.read()
    except OSError:
        text = ""
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    model = fields.get("model name") or fields.get("Model") or _processor()
    flags = fields.get("flags") or fields.get("Features") or ""
    flag_set = set(flags.split())
    if _arch() == "arm64":
        flag_set |= {"neon"} if "asimd" in flag_set else set()
    vendor = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(fields.get("vendor_id", ""), "")
    return CPU(model=model, vendor=vendor or _vendor(model), cores=cores, flags=tuple(sorted(flag_set)))


def _vendor(model: str) -> str:
    lowered = model.lower()
    for needle, vendor in (("intel", "intel"), ("amd", "amd"), ("apple", "apple"), ("arm", "arm")):
        if needle in lowered:
            return vendor
    return "unknown"


def _mac_amd_gpus() -> list[GPU]:
    """The AMD GPUs of an Intel Mac, as system_profiler lists them (about a second; Intel Macs only)."""
    import subprocess

    try:
        text = subprocess.run(
            ["system_profiler", "-json", "SPDisplaysDataType"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return mac_amd_gpus(text)


def mac_amd_gpus(system_profiler_json: str) -> list[GPU]:
    """The AMD GPUs in ``system_profiler -json SPDisplaysDataType`` output, numbered as MPS sees them."""
    import json

    try:
        displays = json.loads(system_profiler_json).get("SPDisplaysDataType", [])
    except (ValueError, AttributeError):
        return []
    gpus: list[GPU] = []
    for entry in displays if isinstance(displays, list) else []:
        if not isinstance(entry, dict):
            continue
        vendor = str(entry.get("spdisplays_vendor", "")).lower()
        name = str(entry.get("sppci_model", "") or entry.get("_name", ""))
        if "amd" in vendor or "ati" in vendor or name.lower().startswith(("amd", "radeon")):
            vram_text = str(entry.get("spdisplays_vram", "") or entry.get("_spdisplays_vram", ""))
            vram = re.match(r"\s*(\d+)\s*([GM])B", vram_text)
            memory = int(vram.group(1)) * 1024 ** (3 if vram.group(2) == "G" else 2) if vram else 0
            gpus.append(GPU(index=len(gpus), name=name, vendor="amd", memory_total=memory))
    return gpus


def _sysctl(name: str) -> str:
    import subprocess  # macOS only; keeps the Linux start-up lean

    try:
        return subprocess.run(
            ["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return _windows_memory()


def _windows_memory() -> int:
    import ctypes

    class _Status(ctypes.Structure):
        _fields_ = [
            ("length", ctypes.c_ulong),
            ("load", ctypes.c_ulong),
            ("total", ctypes.c_ulonglong),
            ("avail", ctypes.c_ulonglong),
            ("_rest", ctypes.c_ulonglong * 5),
        ]

    status = _Status(length=ctypes.sizeof(_Status))
    try:
        # ctypes.windll is Windows-only, ignored by the type checker here: this branch runs only on Windows.
        ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status))  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return 0
    return int(status.total)


def _torch_build() -> TorchBuild | None:
    # find_spec("torch.version") would import torch; read its files as text instead.
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = next(iter(spec.submodule_search_locations))
    version_py = _read(os.path.join(root, "version.py"))

    def assigned(name: str) -> str | None:
        match = re.search(rf"^{name}\s*(?::[^=]*)?=\s*'([^']*)'", version_py, re.M)
        return match.group(1) if match else None

    config = _read(os.path.join(root, "include", "ATen", "Config.h"))
    cuda_config = _read(os.path.join(root, "include", "ATen", "cuda", "CUDAConfig.h"))
    return TorchBuild(
        version=assigned("__version__") or installed_version("torch") or "unknown",
        cuda=assigned("cuda"),
        hip=assigned("hip"),
        mkl="AT_MKL_ENABLED() 1" in config,
        mkldnn="AT_MKLDNN_ENABLED() 1" in config,
        cudnn="AT_CUDNN_ENABLED() 1" in cuda_config,
    )


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read()
    except OSError:
        return ""


def _on_path(program: str) -> bool:
    # shutil.which without importing shutil (and the compression modules it pulls in).
    names = (
        [program + ext for ext in os.environ.get("PATHEXT", ".EXE").split(";")]
        if sys.platform == "win32"
        else [program]
    )
    return any(
        os.access(os.path.join(folder, name), os.X_OK) and not os.path.isdir(os.path.join(folder, name))
        for folder in os.environ.get("PATH", "").split(os.pathsep)
        if folder
        for name in names
    )


def module_versions(modules: Iterable[ModuleRequirement]) -> dict[str, str]:
    """module -> its distribution's version ("" when unknown) for each module found, without importing it."""
    found: dict[str, str] = {}
    for requirement in modules:
        try:
            spec = importlib.util.find_spec(requirement.module)
        except (ImportError, ValueError):
            spec = None
        if spec is not None:
            found[requirement.module] = installed_version(requirement.distribution) or ""
    return found


def visible_device_filter(environ: Mapping[str, str]) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as a list of entries (indices or UUID prefixes); None when unset.

    As CUDA does, entries after the first invalid one are ignored.
    """
    raw = environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    entries: list[str] = []
    for entry in (e.strip() for e in raw.split(",")):
        # Short ASCII digits only: "²".isdigit() holds and int("²") raises; int() refuses 4300 digits.
        if not ((entry.isascii() and entry.isdigit() and len(entry) <= 6) or entry.startswith(("GPU-", "MIG-"))):
            break
        entries.append(entry)
    return entries


def _nvidia_gpus(environ: Mapping[str, str]) -> tuple[list[GPU], dict[str, str], str]:
    """NVIDIA GPUs through NVML (no CUDA context), filtered and renumbered by CUDA_VISIBLE_DEVICES."""
    try:
        driver, cuda_driver, physical = query_nvml()
    except NVMLError as exc:
        return [], {}, f"NVML: {exc}"
    wanted = visible_device_filter(environ)
    if wanted is not None:
        physical = [
            d
            for entry in wanted
            for d in physical
            if (entry.isdigit() and d.index == int(entry)) or (not entry.isdigit() and d.uuid.startswith(entry))
        ]
    visible = [
        GPU(
            index=n,
            name=d.name,
            vendor="nvidia",
            compute_capability=d.compute_capability,
            memory_total=d.memory_total,
            memory_free=d.memory_free,
            uuid=d.uuid,
        )
        for n, d in enumerate(physical)
    ]
    return visible, {"nvidia_driver": driver, "cuda_driver": cuda_driver}, ""
