"""The per-launch folder of ``mistralrs launch`` (ring writes its RING_CONFIG files there), swept by the next launch.

Every launch of one user makes its folder under ``<temp>/mistralrs-launch-<uid>/``
and holds an exclusive lock on a file inside it for as long as it runs. A
launcher that ends normally removes its folder; one killed with SIGKILL cannot,
but its lock dies with it, so the next launch removes every folder whose lock it
can take. The OS's own cleaning of the temporary folder (at boot, or by age)
catches the rest. Where file locks are not available (Windows) a folder is only
removed by its own launcher and the OS.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from types import TracebackType

_LOCK = ".lock"


def _parent() -> str | None:
    """This user's folder of launch folders, or None when it cannot be trusted (not ours, a link)."""
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    parent = os.path.join(tempfile.gettempdir(), f"mistralrs-launch-{uid}")
    try:
        os.makedirs(parent, mode=0o700, exist_ok=True)
        info = os.lstat(parent)
    except OSError:
        return None
    import stat

    mine = not hasattr(os, "getuid") or info.st_uid == os.getuid()
    return parent if stat.S_ISDIR(info.st_mode) and mine else None


def _try_lock(fd: int) -> bool:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _sweep(parent: str) -> None:
    """Remove the folders of launchers that died without cleaning up (their lock is free)."""
    for entry in os.scandir(parent):
        if not entry.is_dir(follow_symlinks=False):
            continue
        try:
            fd = os.open(os.path.join(entry.path, _LOCK), os.O_RDONLY)
        except OSError:
            continue  # being created right now, or not one of ours: leave it to its owner or the OS
        try:
            if _try_lock(fd):
                shutil.rmtree(entry.path, ignore_errors=True)
        finally:
            os.close(fd)


class LaunchFolder:
    """A private folder for one launch, locked while the launcher lives: ``with LaunchFolder() as path:``."""

    def __init__(self) -> None:
        self.path = ""
        self._fd: int | None = None

    def __enter__(self) -> str:
        parent = _parent()
        locks = parent is not None and os.name == "posix"
        if parent is not None and locks:
            _sweep(parent)
        self.path = tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent)
        if locks:
            # Locked before it gets the name a sweep looks for, so no sweep can take it in between.
            pending = os.path.join(self.path, _LOCK + ".new")
            self._fd = os.open(pending, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            _try_lock(self._fd)
            os.replace(pending, os.path.join(self.path, _LOCK))
        return self.path

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
