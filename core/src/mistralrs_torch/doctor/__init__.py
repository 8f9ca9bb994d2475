"""``mistralrs doctor``: diagnose the machine, the plugins and the features, and verify every backend."""

from mistralrs_torch.doctor._configuration import collective_timeout_check
from mistralrs_torch.doctor._doctor import DEVICE_LAYERS_CHECK, device_layers_check, run_doctor
from mistralrs_torch.doctor._report import DOCTOR_SCHEMA, SECTIONS, DoctorReport, Verification

__all__ = ["DEVICE_LAYERS_CHECK", "DOCTOR_SCHEMA", "SECTIONS", "DoctorReport", "Verification",
           "collective_timeout_check", "device_layers_check", "run_doctor"]
