"""System snapshots: facts about a host, probed here or loaded from a profile."""

from mistralrs.system._blas import BlasInfo, blas_info
from mistralrs.system._hardware import HARDWARE_CLASSES, hardware_classes
from mistralrs.system._probe import probe_system, visible_device_filter
from mistralrs.system._profiles import PROFILE_NAMES, load_system
from mistralrs.system._snapshot import CPU, GPU, SCHEMA, SystemSnapshot, TorchBuild

__all__ = [
    "CPU",
    "BlasInfo",
    "GPU",
    "HARDWARE_CLASSES",
    "PROFILE_NAMES",
    "SCHEMA",
    "SystemSnapshot",
    "TorchBuild",
    "blas_info",
    "hardware_classes",
    "load_system",
    "probe_system",
    "visible_device_filter",
]
