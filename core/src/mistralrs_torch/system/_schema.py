"""The schema of a serialised system snapshot: what ``--system FILE`` accepts, field by field.

The same definition checks a file (:func:`snapshot_problems`) and is published
as JSON Schema (:func:`snapshot_json_schema`, docs/system.schema.json). The
limits are generous for real machines and refuse absurd ones: a million GPUs, a
negative core count, compute capability 99.0, memory beyond a pebibyte, text
with terminal control characters. Two rules JSON Schema cannot say are checked
here too: GPUs are numbered 0, 1, 2, ... in order, and a GPU's free memory is not
more than its total.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

#: GPUs one snapshot may list (hosts carry 8 or 16; a whole rack is not one host).
MAX_GPUS = 1024
#: Larger files are refused unread (a snapshot with 1024 GPUs is about 300 KiB).
MAX_SNAPSHOT_BYTES = 1 << 20
_PiB = 1 << 50
_TiB = 1 << 40
#: Printable text: control characters would reach the terminal when the snapshot is shown.
_PRINTABLE = r"[^\x00-\x1f\x7f]*"


@cache
def _schema() -> Any:
    from mistralrs_torch.system._snapshot import SCHEMA
    from mistralrs_torch.validation import Const, Flag, Integer, ListOf, MapOf, Nullable, Record, Text

    def text(limit: int, description: str = "") -> Text:
        return Text(limit, _PRINTABLE, "printable text", description)

    def name(limit: int, pattern: str, allows: str, description: str) -> Text:
        return Text(limit, pattern, allows, description)

    version = Nullable(text(128))
    cpu = Record({
        "model": text(256, "CPU model name"),
        "vendor": name(32, r"[a-z0-9_-]*", "a lower-case name such as intel, amd, apple, arm or unknown",
                       "CPU vendor"),
        "cores": Integer(1, 1 << 16, "logical cores"),
        "flags": ListOf(name(64, r"[A-Za-z0-9_.+-]+", "an instruction-set name such as avx2", ""), 4096,
                        description="instruction-set flags as the OS names them (avx2, avx512f, amx_tile, neon)"),
    }, description="the host CPU")
    gpu = Record({
        "index": Integer(0, MAX_GPUS - 1, "position in this list: 0, 1, 2, ..."),
        "name": text(256, "the GPU's name"),
        "vendor": name(32, r"[a-z][a-z0-9_-]*", "a lower-case name such as nvidia or apple", "GPU vendor"),
        "compute_capability": Nullable(ListOf(Integer(0, 99), 2, 2),
                                       "[major, minor] for NVIDIA GPUs (major 1..20, minor 0..9), null otherwise"),
        "memory_total": Integer(0, 16 * _TiB, "bytes"),
        "memory_free": Nullable(Integer(0, 16 * _TiB), "bytes, null when unknown; at most memory_total"),
        "uuid": text(128, "as nvidia-smi -L prints it, or empty"),
    }, required=("index", "name", "vendor"))
    torch = Record({
        "version": text(128), "cuda": version, "hip": version, "mkl": Flag(), "mkldnn": Flag(), "cudnn": Flag(),
    }, required=("version",), description="how the installed torch was built")
    return Record({
        "schema": Const(SCHEMA, "the snapshot format, written by `mistralrs plugins system --json`"),
        "source": text(4096, "where the snapshot came from (replaced by the file's path when loaded)"),
        "os": name(32, r"[a-z][a-z0-9_.-]*", "a lower-case name such as linux, macos or windows", "operating system"),
        "os_release": text(256),
        "arch": name(32, r"[A-Za-z0-9_.-]+", "a machine name such as x86_64 or arm64", "CPU architecture"),
        "python": text(64),
        "cpu": cpu,
        "memory_total": Integer(0, _PiB, "host memory in bytes"),
        "torch": Nullable(torch),
        "gpus": ListOf(gpu, MAX_GPUS, description="visible GPUs, numbered as CUDA/MPS numbers them"),
        "libraries": MapOf(text(128), 256, description="library name -> version ('' when the version is unknown)"),
        "modules": MapOf(text(128), 256, description="Python module -> its distribution's version"),
        "notes": ListOf(text(1000), 64),
    }, required=("schema",), description="facts about one host: what resolution and doctor need to know")


def _cross_field(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    found = []
    for position, gpu in enumerate(data.get("gpus") or ()):
        where = f"gpus[{position}]"
        if gpu.get("index") != position:
            found.append((f"{where}.index", f"is {gpu.get('index')}: GPUs are numbered 0, 1, 2, ... in order"))
        cc = gpu.get("compute_capability")
        if cc is not None and not (1 <= cc[0] <= 20 and 0 <= cc[1] <= 9):
            found.append((f"{where}.compute_capability", f"is {cc}: NVIDIA's are 1.0 .. 20.9 (e.g. [9, 0])"))
        free, total = gpu.get("memory_free"), gpu.get("memory_total", 0)
        if free is not None and free > total:
            found.append((f"{where}.memory_free", f"is {free}, more than memory_total ({total})"))
    return found


def snapshot_problems(data: Any) -> list[tuple[str, str]]:
    """Every (field, problem) of a parsed snapshot file; empty when it is valid."""
    from mistralrs_torch.validation import problems

    found = problems(_schema(), data)
    return found or _cross_field(data)


def snapshot_json_schema() -> dict[str, Any]:
    """The snapshot format as a JSON Schema document (docs/system.schema.json is this, written out)."""
    from mistralrs_torch.system._snapshot import SCHEMA
    from mistralrs_torch.validation import json_schema

    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": f"mistralrs system snapshot, schema {SCHEMA}",
            "$comment": "Generated by `mistralrs plugins system --schema`; loading also checks that GPUs are numbered "
                        "0, 1, 2, ... in order, that compute capabilities lie in 1.0 .. 20.9, and that a GPU's "
                        "memory_free is at most its memory_total.", **json_schema(_schema())}
