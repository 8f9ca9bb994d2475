"""``mistralrs doctor``: diagnose the machine, the plugins and the features, and verify every backend."""

from mistralrs_torch.doctor._doctor import run_doctor
from mistralrs_torch.doctor._report import DOCTOR_SCHEMA, SECTIONS, DoctorReport, Verification

__all__ = ["DOCTOR_SCHEMA", "SECTIONS", "DoctorReport", "Verification", "run_doctor"]
