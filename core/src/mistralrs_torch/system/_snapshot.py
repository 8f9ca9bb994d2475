"""The system snapshot: frozen facts about one host, serialisable to JSON and back.

A snapshot is either probed from this machine or loaded from JSON (a named
profile or a file), so every rule can be evaluated for hardware that is not here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

from mistralrs_torch._errors import SystemProfileError
from mistralrs_torch.validation import shown

#: Versioned schema tag written into every serialised snapshot.
SCHEMA = "mistralrs.system/1"


@dataclass(frozen=True)
class CPU:
    """The host CPU: model, vendor ("intel", "amd", "apple", "arm", "unknown"), cores and instruction sets."""

    model: str = "unknown"
    vendor: str = "unknown"
    cores: int = 1
    #: Lower-case instruction-set flags as the OS names them: avx2, avx512f, amx_tile, neon, ...
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class GPU:
    """One visible GPU. ``index`` is its index as CUDA/MPS numbers it after CUDA_VISIBLE_DEVICES."""

    index: int
    name: str
    vendor: str
    compute_capability: tuple[int, int] | None = None
    memory_total: int = 0
    memory_free: int | None = None
    uuid: str = ""

    def __post_init__(self) -> None:
        cc = self.compute_capability
        if cc is not None and not (isinstance(cc, tuple) and len(cc) == 2 and all(type(v) is int for v in cc)):
            raise ValueError(
                f"GPU {self.index}: compute_capability {cc!r} must be [major, minor] integers, e.g. [9, 0]"
            )
        if type(self.index) is not int or not isinstance(self.name, str) or type(self.memory_total) is not int:
            raise ValueError(f"GPU {self.index!r}: index and memory_total must be integers and name a string")

    @property
    def cc_label(self) -> str:
        """The compute capability as "8.6" ("n/a" for non-NVIDIA GPUs)."""
        cc = self.compute_capability
        return f"{cc[0]}.{cc[1]}" if cc else "n/a"


@dataclass(frozen=True)
class TorchBuild:
    """How the installed torch was built, read from its files without importing it."""

    version: str
    cuda: str | None = None
    hip: str | None = None
    mkl: bool = False
    mkldnn: bool = False
    cudnn: bool = False


@dataclass(frozen=True)
class SystemSnapshot:
    """Everything resolution and doctor need to know about a host.

    ``libraries`` maps a library name (cuda, cuda_driver, cudnn, nccl, mkl,
    accelerate, mps, nvcc, or one a plugin probes) to its version, "" when
    present with an unknown version; absent libraries are not listed.
    ``modules`` maps importable Python modules named by manifests to their
    distribution's version the same way.
    """

    source: str = "this machine"
    os: str = "linux"
    os_release: str = ""
    arch: str = "x86_64"
    python: str = ""
    cpu: CPU = CPU()
    memory_total: int = 0
    torch: TorchBuild | None = None
    gpus: tuple[GPU, ...] = ()
    libraries: Mapping[str, str] = field(default_factory=dict, hash=False)
    modules: Mapping[str, str] = field(default_factory=dict, hash=False)
    #: Facts a deep probe could not confirm, or notes a probe wants shown ("NVML: driver not loaded").
    notes: tuple[str, ...] = ()
    #: True only for a snapshot probed on this machine in this process; loaded ones describe another machine,
    #: so checks that ask live libraries (torch, MPS) must not judge them.
    local: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "libraries", MappingProxyType(dict(self.libraries)))
        object.__setattr__(self, "modules", MappingProxyType(dict(self.modules)))

    def gpus_of(self, vendor: str) -> tuple[GPU, ...]:
        """The visible GPUs of one vendor ("nvidia", "apple")."""
        return tuple(g for g in self.gpus if g.vendor == vendor)

    def with_facts(
        self, libraries: Mapping[str, str] = MappingProxyType({}), notes: tuple[str, ...] = ()
    ) -> SystemSnapshot:
        """A copy with more library facts and notes (plugin probes add them this way)."""
        return replace(self, libraries={**self.libraries, **libraries}, notes=self.notes + notes)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict carrying :data:`SCHEMA` (without ``local``: it is not a fact about the machine)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "local"}  # a process fact
        data.update(
            cpu=asdict(self.cpu),
            torch=asdict(self.torch) if self.torch else None,
            gpus=[asdict(g) for g in self.gpus],
            libraries=dict(self.libraries),
            modules=dict(self.modules),
        )
        return {"schema": SCHEMA, **data}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "") -> SystemSnapshot:
        """Build a snapshot from :meth:`to_json` output; SystemProfileError names every field at fault.

        The format is docs/system.schema.json (:func:`mistralrs_torch.system.snapshot_json_schema`).
        """
        from mistralrs_torch.system._schema import snapshot_problems
        from mistralrs_torch.validation import problem_lines

        where = source or "system snapshot"
        if not isinstance(data, Mapping) or data.get("schema") != SCHEMA:
            found = data.get("schema") if isinstance(data, Mapping) else None
            raise SystemProfileError(
                f"{where}: schema {shown(found)} is not {SCHEMA!r}: "
                "write it with `mistralrs plugins system --json` from this version"
            )
        problems = snapshot_problems(data)
        if problems:
            raise SystemProfileError(
                "\n".join(
                    [
                        f"{where} is a malformed system snapshot:",
                        *problem_lines(problems),
                        "compare it with `mistralrs plugins system --json` or docs/system.schema.json",
                    ]
                )
            )
        values = {k: v for k, v in data.items() if k != "schema"}
        cpu_data = values.pop("cpu", {})
        cpu = CPU(**{**cpu_data, "flags": tuple(cpu_data.get("flags", ()))})
        torch_data = values.pop("torch", None)
        gpus = tuple(
            GPU(
                **{
                    **g,
                    "compute_capability": tuple(g["compute_capability"])
                    if g.get("compute_capability") is not None
                    else None,
                }
            )
            for g in values.pop("gpus", ())
        )
        values["notes"] = tuple(values.get("notes", ()))
        values["source"] = source or values.get("source", "")
        return cls(**values, cpu=cpu, torch=TorchBuild(**torch_data) if torch_data else None, gpus=gpus)

    def dumps(self) -> str:
        """The snapshot as indented JSON text."""
        import json

        return json.dumps(self.to_json(), indent=2, sort_keys=True)
