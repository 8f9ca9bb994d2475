"""Deep probes: import torch and confirm the facts the cheap probe read from files."""

from __future__ import annotations

from mistralrs_torch.ops import CheckResult
from mistralrs_torch.system import SystemSnapshot


def confirm_with_torch(system: SystemSnapshot) -> list[CheckResult]:
    """One check per fact: "ok" when import-time torch agrees with the cheap probe, "warning" when not."""
    import torch

    cheap = system.torch
    if cheap is None:
        return [
            CheckResult(
                "torch import",
                f"torch {torch.__version__} imports but the cheap probe found none",
                "report this: the cheap probe could not find torch's files",
                status="warning",
            )
        ]
    facts: dict[str, tuple[object, object]] = {
        "torch version": (cheap.version, torch.__version__),
        "CUDA build": (cheap.cuda, torch.version.cuda),
        "MKL": (cheap.mkl, torch.backends.mkl.is_available()),
        "oneDNN": (cheap.mkldnn, torch.backends.mkldnn.is_available()),
        "cuDNN build": (cheap.cudnn, bool(torch.version.cuda) and torch.backends.cudnn.is_available()),
    }
    if cheap.cuda:
        facts["NVIDIA GPUs"] = (len(system.gpus_of("nvidia")), torch.cuda.device_count())
    checks = []
    for name, (read, imported) in facts.items():
        if read == imported:
            checks.append(CheckResult(name, f"{imported} (confirmed by importing torch)", status="ok"))
        else:
            checks.append(
                CheckResult(
                    name,
                    f"the cheap probe read {read!r} but torch reports {imported!r}",
                    "list and resolve may misjudge this machine: please report it",
                    status="warning",
                )
            )
    return checks
