"""C kernels compiled at first use for the CPU that runs them, and cached on disk.

The source ships with the package; the shared library is built once per
source, compiler and CPU (its flags are in the cache key, because -march=native
code may not run on another CPU), under MISTRALRS_KERNEL_CACHE (default
~/.cache/mistralrs-torch/kernels, or under XDG_CACHE_HOME). The compiler is $CC,
else the first of cc, gcc, clang on PATH. Building is atomic (a temporary file
renamed into place), so ranks starting together never load half a library.
A machine without a compiler gets a :class:`NativeBuildError` naming what to
install; the backend that needed the kernel turns it into its refusal reason.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from mistralrs_torch._errors import MistralrsError
from mistralrs_torch._settings import cache_home

#: Flag sets tried in order: OpenMP threads where the compiler has them, plain C where -march=native is unknown.
_FLAG_SETS = (("-O3", "-march=native", "-fopenmp"), ("-O3", "-march=native"), ("-O3",))
_COMPILE_TIMEOUT_S = 120


class NativeBuildError(MistralrsError):
    """A C kernel could not be compiled or loaded on this machine; the message says what to install or set."""


def kernel_cache_dir(environ: Mapping[str, str]) -> Path:
    """MISTRALRS_KERNEL_CACHE, else $XDG_CACHE_HOME/mistralrs-torch/kernels, else ~/.cache/..."""
    if environ.get("MISTRALRS_KERNEL_CACHE", "").strip():
        return Path(environ["MISTRALRS_KERNEL_CACHE"]).expanduser()
    return cache_home(environ) / "kernels"


def _compiler(environ: Mapping[str, str]) -> str:
    named = environ.get("CC", "").strip()
    found = shutil.which(named) if named else next(filter(None, map(shutil.which, ("cc", "gcc", "clang"))), None)
    if found is None:
        wanted = f"CC={named!r} is not an executable on PATH" if named else "no C compiler (cc, gcc, clang) on PATH"
        raise NativeBuildError(f"{wanted}: install one (Debian/Ubuntu: apt install gcc; macOS: xcode-select "
                               "--install) or set CC to a C compiler to build this CPU kernel")
    return found


def _cpu_identity() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            lines = [line for line in info if line.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


@functools.cache
def _load(source: Path, compiler: str, cache: Path) -> ctypes.CDLL:
    # The headers beside the source are part of what is compiled, so they are part of the key.
    text = b"\0".join(path.read_bytes() for path in (source, *sorted(source.parent.glob("*.h"))))
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, errors="replace",
                             timeout=30).stdout
    key = hashlib.sha256(b"\0".join([text, compiler.encode(), version.encode(), _cpu_identity().encode()]))
    target = cache / f"{source.stem.lstrip('_')}-{key.hexdigest()[:16]}.so"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        errors = []
        for flags in _FLAG_SETS:
            handle, partial = tempfile.mkstemp(suffix=".so", dir=cache)
            os.close(handle)
            built = subprocess.run([compiler, *flags, "-shared", "-fPIC", str(source), "-o", partial],
                                   capture_output=True, text=True, errors="replace", timeout=_COMPILE_TIMEOUT_S)
            if built.returncode == 0:
                os.replace(partial, target)
                break
            os.unlink(partial)
            errors.append(f"{' '.join(flags)}: {(built.stderr.strip().splitlines() or ['no output'])[-1]}")
        else:
            raise NativeBuildError(f"{compiler} could not build {source.name}: {'; '.join(errors)}; set CC to a "
                                   "C11 compiler")
    return ctypes.CDLL(str(target))


def load_kernel(source_name: str, environ: Mapping[str, str] | None = None) -> ctypes.CDLL:
    """The shared library built from ``source_name`` (a C file beside this module), compiled on first use."""
    environ = os.environ if environ is None else environ
    try:
        return _load(Path(__file__).with_name(source_name), _compiler(environ), kernel_cache_dir(environ))
    except NativeBuildError:
        raise
    except (OSError, subprocess.SubprocessError) as exc:
        raise NativeBuildError(f"building or loading the CPU kernel {source_name} failed ({exc}): check that "
                               f"MISTRALRS_KERNEL_CACHE ({kernel_cache_dir(environ)}) is writable and CC works"
                               ) from exc


class NativeLibrary:
    """A backend's C library, built or loaded at its first ``get()``; where it cannot be, or ``refuse`` (given the
    loaded library) names a reason not to use it, ``get()`` is None and ``reason`` says why (the backend's
    refusal reason). ``bind`` declares the exported functions' types."""

    def __init__(self, source_name: str, bind: Callable[[ctypes.CDLL], ctypes.CDLL],
                 refuse: Callable[[ctypes.CDLL], str] = lambda library: "") -> None:
        self.source_name, self._bind, self._refuse = source_name, bind, refuse
        self._library: ctypes.CDLL | None = None
        self.reason = ""

    def get(self) -> ctypes.CDLL | None:
        if self._library is None and not self.reason:
            try:
                library = self._bind(load_kernel(self.source_name))
            except NativeBuildError as exc:
                self.reason = str(exc)
            else:
                self.reason = self._refuse(library)
                self._library = None if self.reason else library
        return self._library

    @property
    def loaded(self) -> ctypes.CDLL:
        """The library on an op's hot path, after ``get()`` accepted it (supports() runs before any call binds)."""
        library = self._library
        assert library is not None, "supports() loaded the kernel before a call was bound"
        return library
