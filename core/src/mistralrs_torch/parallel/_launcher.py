"""The machinery of ``mistralrs launch``: start N local ranks, prefix their output, contain their failures.

Every rank gets the torchrun variables (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), plus what the backend plugin's
``mistralrs_launch_environment`` hook adds (ring writes a RING_CONFIG per
rank), and OMP_NUM_THREADS = this machine's cores / ranks (at least 1) unless
the user set it: N ranks each taking every core would oversubscribe them.
Each output line is prefixed ``[rank K]``. SIGINT (Ctrl-C), SIGTERM
and SIGHUP are forwarded to every rank; the first rank that fails stops the
others and its exit status becomes the launcher's. Each rank runs in its own
process group, which is killed at the end, so no rank or child of one is
left behind; on Linux a rank also dies if the launcher itself is killed.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import click

from mistralrs_torch._errors import ConfigError, InputError
from mistralrs_torch.plugins import PluginManager
from mistralrs_torch.resolution import Selection, resolve
from mistralrs_torch.validation import shown

_POSIX = os.name == "posix"
_POLL = 0.05


def _die_with_launcher() -> Callable[[], None] | None:
    """A preexec function that makes the child get SIGKILL when the launcher dies (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return preexec


def rendezvous_port(addr: str, port: int) -> int:
    """``port`` (0: a free one) after checking that rank 0 can listen on ``addr``:``port`` here.

    Every rank of `mistralrs launch` runs on this machine, so the address must be one of its own.
    """
    from mistralrs_torch.parallel._rendezvous import is_wildcard, valid_host

    label = f"--master-addr {shown(addr)}"
    if not is_wildcard(addr) and (len(addr) > 253 or not valid_host(addr)):
        raise InputError(label, "is neither an IP address nor a host name",
                         "give an address of this machine, e.g. 127.0.0.1 (all ranks run here)")
    host = "" if is_wildcard(addr) else addr.strip("[]")
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        raise InputError(label, f"cannot be resolved ({getattr(exc, 'strerror', None) or exc})",
                         "give an address of this machine, e.g. 127.0.0.1") from None
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InputError(f"--master-port {port}", f"is already in use on {addr}",
                                 "pick a free port, or leave --master-port out for a free one") from None
            raise InputError(label, f"is not an address of this machine ({exc.strerror or exc})",
                             "give an address of this machine, e.g. 127.0.0.1 (all ranks run here)") from None
        return int(sock.getsockname()[1])


def check_command(command: Sequence[str]) -> None:
    """ConfigError unless ``command[0]`` is an executable file (checked before anything is prepared)."""
    import shutil

    program = command[0]
    found = shutil.which(program) if os.sep not in program and not (os.altsep and os.altsep in program) else \
        program if os.path.isfile(program) and os.access(program, os.X_OK) else None
    if found is None:
        raise ConfigError(f"cannot start {shown(program)}: no such executable (not a file, not executable, or not "
                          "on PATH): check the command after `--` (its path, and that it is executable)")


def _status_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _exit_code(code: int) -> int:
    return 128 - code if code < 0 else code


class _Output:
    """Copies each rank's stdout and stderr line by line, prefixed, from one thread per stream."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def follow(self, rank: int, source: IO[bytes], target: IO[str]) -> None:
        thread = threading.Thread(target=self._pump, args=(f"[rank {rank}] ".encode(), source, target), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _pump(self, prefix: bytes, source: IO[bytes], target: IO[str]) -> None:
        raw = getattr(target, "buffer", None)
        for line in iter(source.readline, b""):
            if not line.endswith(b"\n"):
                line += b"\n"
            with self._lock:
                if raw is not None:
                    target.flush()
                    raw.write(prefix + line)
                    raw.flush()
                else:
                    target.write((prefix + line).decode("utf-8", "replace"))
                    target.flush()
        source.close()

    def say(self, message: str) -> None:
        with self._lock:
            click.echo(f"[launch] {message}", err=True)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class _Ranks:
    """The running ranks: signals go to each rank's whole process group."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, command: Sequence[str], envs: Sequence[Mapping[str, str]]) -> None:
        preexec = _die_with_launcher()
        for env in envs:
            try:
                self.procs.append(subprocess.Popen(
                    list(command), env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, start_new_session=_POSIX, preexec_fn=preexec,
                    # Windows-only name, ignored by the type checker here: this branch runs only on Windows.
                    creationflags=0 if _POSIX else subprocess.CREATE_NEW_PROCESS_GROUP))  # type: ignore[attr-defined]
            except OSError as exc:
                self.kill()
                raise ConfigError(f"cannot start {shown(command[0])}: {exc.strerror or exc}: check the command after "
                                  "`--` (its path, and that it is executable)") from None

    def signal(self, sig: int, which: Sequence[int] | None = None) -> None:
        for rank, proc in enumerate(self.procs):
            if which is not None and rank not in which:
                continue
            try:
                if _POSIX:
                    os.killpg(proc.pid, sig)  # the group outlives its leader while the rank's children live
                elif proc.poll() is None:
                    # Windows-only name, ignored by the type checker here: this branch runs only on Windows.
                    proc.send_signal(signal.CTRL_BREAK_EVENT if sig == signal.SIGINT else sig)  # type: ignore[attr-defined]
            except (ProcessLookupError, PermissionError, OSError):
                pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL if _POSIX else signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def running(self) -> list[int]:
        return [rank for rank, proc in enumerate(self.procs) if proc.poll() is None]


def _collective_backend(manager: PluginManager, feature: str) -> str:
    """The plugin that ships ``feature``, after checking the feature is a collective one that can run here."""
    owners = {f.manifest.name: f for f in manager.features}
    collective = sorted(n for n, f in owners.items() if "collectives" in f.manifest.provides and n != "cpu")
    if feature not in owners or "collectives" not in owners[feature].manifest.provides or feature == "cpu":
        raise ConfigError(f"--backend {shown(feature)} is not an installed collective feature: choose one of "
                          f"{', '.join(collective) or '(none installed: install a plugin that provides collectives)'}")
    # Fail here, once, rather than in every rank: the same rules the ranks' resolution applies.
    resolve(manager.features, manager.broken, Selection("explicit", (feature,), f"--backend {feature}"),
            manager.probe_system(), os.environ)
    return owners[feature].plugin.name


def threads_per_rank(nproc: int) -> int:
    """The cores this process may use, shared among ``nproc`` local ranks; at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // nproc)


def rank_environments(nproc: int, backend: str | None, addr: str, port: int, workdir: str) -> list[dict[str, str]]:
    """Each rank's environment: this one, the torchrun variables, OMP_NUM_THREADS unless set, and what
    ``backend``'s plugin adds.

    ConfigError when ``backend`` is not a collective feature that can run here, or its plugin refuses.
    """
    manager = PluginManager(environ=os.environ, strict=False)
    plugin = _collective_backend(manager, backend) if backend is not None else None
    envs = []
    for rank in range(nproc):
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")  # so that a rank's lines arrive as it prints them
        env.setdefault("OMP_NUM_THREADS", str(threads_per_rank(nproc)))
        env.update(RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(nproc),
                   GROUP_RANK="0", MASTER_ADDR=addr, MASTER_PORT=str(port))
        if plugin is not None:
            def valid(r: object) -> bool:
                return isinstance(r, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in r.items())

            extra = manager.call_plugin(plugin, "mistralrs_launch_environment", valid, feature=backend, rank=rank,
                                        world_size=nproc, master_addr=addr, master_port=port, workdir=workdir)
            broken = [b for b in manager.broken if b.plugin.name == plugin]
            if broken:
                raise ConfigError(f"plugin {plugin!r} failed to prepare rank {rank} for --backend {backend}: "
                                  f"{broken[0].error}: {broken[0].fix}")
            env.update(extra or {})
        envs.append(env)
    return envs


def launch(command: Sequence[str], envs: Sequence[Mapping[str, str]], grace: float = 5.0) -> int:
    """Run ``command`` once per environment until every rank ends; the launcher's exit status."""
    output, ranks = _Output(), _Ranks()
    received: list[int] = []
    handled = (signal.SIGINT, signal.SIGTERM, *((signal.SIGHUP,) if _POSIX else ()))

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signum)

    previous = (
        {s: signal.signal(s, on_signal) for s in handled}
        if threading.current_thread() is threading.main_thread()
        else {}
    )
    failure: tuple[int, int] | None = None
    try:
        ranks.start(command, envs)
        for rank, proc in enumerate(ranks.procs):
            assert proc.stdout is not None and proc.stderr is not None
            output.follow(rank, proc.stdout, sys.stdout)
            output.follow(rank, proc.stderr, sys.stderr)
        forwarded = 0
        stop_deadline: float | None = None
        term_deadline: float | None = None
        while ranks.running():
            if len(received) > forwarded:
                forwarded = len(received)
                if forwarded == 1:
                    sig = received[0] if received[0] != signal.SIGHUP else signal.SIGTERM
                    output.say(f"{signal.Signals(received[0]).name}: passing it to every rank (again to kill them)")
                    ranks.signal(sig)
                    stop_deadline = time.monotonic() + grace
                    # A rank blocked inside a collective only sees SIGINT once the collective returns; SIGTERM
                    # (which Python does not catch unless told to) ends it at once, halfway through the grace.
                    term_deadline = time.monotonic() + grace / 2 if sig == signal.SIGINT else None
                else:
                    ranks.signal(signal.SIGKILL if _POSIX else signal.SIGTERM)
            if term_deadline is not None and time.monotonic() > term_deadline:
                term_deadline = None
                left = ranks.running()
                if left:
                    output.say(
                        f"rank{'s' if len(left) > 1 else ''} {', '.join(map(str, left))} still running "
                        f"after {grace / 2:g}s: SIGTERM"
                    )
                    ranks.signal(signal.SIGTERM, left)
            if failure is None and not received:
                for rank, proc in enumerate(ranks.procs):
                    if proc.returncode not in (None, 0):
                        failure = (rank, proc.returncode)
                        others = ranks.running()
                        output.say(
                            f"rank {rank} {_status_text(proc.returncode)}"
                            + (
                                f"; stopping rank{'s' if len(others) > 1 else ''} {', '.join(map(str, others))}"
                                if others
                                else ""
                            )
                        )
                        ranks.signal(signal.SIGTERM, others)
                        stop_deadline = time.monotonic() + grace
                        break
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                left = ranks.running()
                if left:
                    output.say(
                        f"rank{'s' if len(left) > 1 else ''} {', '.join(map(str, left))} still running "
                        f"after {grace:g}s: killing"
                    )
                ranks.signal(signal.SIGKILL if _POSIX else signal.SIGTERM, left)
                stop_deadline = None
            time.sleep(_POLL)
        if failure is None and not received:
            failure = next(((r, p.returncode) for r, p in enumerate(ranks.procs) if p.returncode), None)
    finally:
        ranks.kill()  # every rank's process group: children a rank left behind go too
        output.join(timeout=5)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        return 128 + int(received[0])
    return _exit_code(failure[1]) if failure else 0
