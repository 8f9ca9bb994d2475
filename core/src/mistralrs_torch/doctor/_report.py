"""The doctor report: sections of checks, verification results, JSON and text renderings, exit status."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mistralrs_torch._version import __version__
from mistralrs_torch.features import BrokenPlugin
from mistralrs_torch.ops import CheckResult

DOCTOR_SCHEMA = "mistralrs.doctor/1"
#: Section names, in the order doctor prints them.
SECTIONS = (
    "system",
    "accelerators",
    "libraries",
    "plugins",
    "features",
    "configuration",
    "recommendation",
    "verification",
)
_MARK = {"ok": "ok", "info": "--", "warning": "!!", "error": "XX"}


@dataclass(frozen=True)
class Verification:
    """One backend, one op, one dtype: "verified", "failed" or "skipped", with the worst errors and the time.

    The errors and tolerances are the verification engine's (mistralrs_torch.testing.TOLERANCES).
    """

    op: str
    backend: str
    feature: str
    dtype: str
    device: str
    result: str
    max_error: float | None = None
    tolerance: float | None = None
    rms_error: float | None = None
    rms_tolerance: float | None = None
    seconds: float | None = None
    cases: int = 0
    detail: str = ""
    #: The entry-point name of the plugin that ships the backend (what MISTRALRS_DISABLE_PLUGINS takes).
    plugin: str = ""


@dataclass(frozen=True)
class DoctorReport:
    """Everything doctor found: checks per section, and the verification of each bound backend."""

    system: str
    sections: dict[str, tuple[CheckResult, ...]]
    verifications: tuple[Verification, ...]
    verification_note: str = ""
    #: Every plugin found broken (for --traceback; the JSON carries their errors in the plugins section).
    broken: tuple[BrokenPlugin, ...] = ()

    @property
    def errors(self) -> tuple[CheckResult, ...]:
        return tuple(c for checks in self.sections.values() for c in checks if c.status == "error")

    @property
    def failed(self) -> tuple[Verification, ...]:
        return tuple(v for v in self.verifications if v.result == "failed")

    @property
    def exit_code(self) -> int:
        """0 when nothing is an error (warnings do not fail), 1 otherwise."""
        return 1 if self.errors or self.failed else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": DOCTOR_SCHEMA,
            "mistralrs": __version__,
            "system": self.system,
            "ok": self.exit_code == 0,
            "sections": {
                name: [c.to_json() for c in self.sections.get(name, ())] for name in SECTIONS if name != "verification"
            },
            "verification": {"note": self.verification_note, "results": [asdict(v) for v in self.verifications]},
        }

    def to_text(self) -> str:
        lines = [f"mistralrs {__version__} doctor: {self.system}"]
        for name in SECTIONS:
            lines += ["", name.upper()]
            if name == "verification":
                lines += _verification_lines(self)
                continue
            for check in self.sections.get(name, ()):
                source = f" [{check.plugin}]" if check.plugin else ""
                lines.append(f"  {_MARK.get(check.status, '??')} {check.subject}{source}: {check.message}")
                if check.fix:
                    lines.append(f"       fix: {check.fix}")
        problems = len(self.errors) + len(self.failed)
        warnings = sum(c.status == "warning" for checks in self.sections.values() for c in checks)
        lines += ["", f"{'OK' if not problems else 'PROBLEMS'}: {problems} error(s), {warnings} warning(s)"]
        return "\n".join(lines)


def _verification_lines(report: DoctorReport) -> list[str]:
    if report.verification_note:
        return [f"  -- {report.verification_note}"]
    lines = []
    for v in report.verifications:
        mark = {"verified": "ok", "failed": "XX", "skipped": "--"}[v.result]
        if v.result == "skipped":
            lines.append(f"  {mark} {v.op} / {v.backend} ({v.feature}): skipped: {v.detail}")
            continue
        timing = f", {v.seconds * 1000:.2f} ms" if v.seconds is not None else ""
        error = (
            f"max error {v.max_error:.1e} (tolerance {v.tolerance:.0e}), rms {v.rms_error:.1e} "
            f"(tolerance {v.rms_tolerance:.0e})"
            if v.max_error is not None
            else v.detail
        )
        cases = f"{v.cases} case{'s' if v.cases != 1 else ''}"
        lines.append(
            f"  {mark} {v.op} / {v.backend} ({v.feature}) {v.dtype} on {v.device}: {v.result} on {cases}, "
            f"{error}{timing}"
        )
        if v.result == "failed":
            if v.detail and v.max_error is not None:
                lines.append(f"       {v.detail}")
            lines.append(
                f"       fix: a backend that computes wrong results must not run: disable its plugin with "
                f"MISTRALRS_DISABLE_PLUGINS={v.plugin or '<its plugin>'}, or select features without "
                f"{v.feature}, and report it to the plugin's authors"
            )
    return lines
