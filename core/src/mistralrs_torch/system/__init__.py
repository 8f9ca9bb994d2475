"""System snapshots: facts about a host, probed here or loaded from a profile."""

from mistralrs_torch._distributions import installed_version
from mistralrs_torch.system._blas import BlasInfo, blas_info
from mistralrs_torch.system._gpu_facts import FactsOnFirstUse, GPUFacts, cuda_init_error
from mistralrs_torch.system._hardware import HARDWARE_CLASSES, hardware_classes
from mistralrs_torch.system._probe import module_versions, probe_system, visible_device_filter
from mistralrs_torch.system._profiles import PROFILE_NAMES, load_system
from mistralrs_torch.system._schema import snapshot_json_schema
from mistralrs_torch.system._snapshot import CPU, GPU, SCHEMA, SystemSnapshot, TorchBuild

__all__ = [
    "CPU",
    "GPU",
    "HARDWARE_CLASSES",
    "PROFILE_NAMES",
    "SCHEMA",
    "BlasInfo",
    "FactsOnFirstUse",
    "GPUFacts",
    "SystemSnapshot",
    "TorchBuild",
    "blas_info",
    "cuda_init_error",
    "hardware_classes",
    "installed_version",
    "load_system",
    "module_versions",
    "probe_system",
    "snapshot_json_schema",
    "visible_device_filter",
]
