"""`mistralrs launch`: prefixed output, torchrun variables, the first failure stops the others, Ctrl-C, no leftovers.

The ranks here are small Python scripts (no torch), so these tests are quick.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mistralrs_torch import probe_system
from mistralrs_torch_ring._config import check_ring_configs

pytestmark = pytest.mark.multiprocess


@pytest.fixture
def script(tmp_path: Path) -> Callable[[str], str]:
    """script(code) -> the path of a Python file holding ``code`` (dedented)."""
    count = [0]

    def write(code: str) -> str:
        count[0] += 1
        path = tmp_path / f"rank_script{count[0]}.py"
        path.write_text("import os, signal, sys, time\nRANK = int(os.environ['RANK'])\n" + textwrap.dedent(code))
        return str(path)

    return write


@pytest.fixture
def launch(cli_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """launch(*args) starts `python -m mistralrs_torch launch *args` in its own process group (killed at the end)."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-m", "mistralrs_torch", "launch", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**cli_env, **(env or {})}, cwd=tmp_path,
                                start_new_session=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for an absent reaper counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_dead(pids: list[int], seconds: float = 10) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(map(_alive, pids)):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def test_each_line_is_prefixed_and_every_rank_gets_the_torchrun_variables(launch, script) -> None:
    code = script("""
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
        print("env " + " ".join(os.environ[n] for n in names))
        print(f"to stderr {RANK}", file=sys.stderr)
        sys.stdout.write(f"no newline at the end {RANK}")
        """)
    out, err = launch("-n", "3", "--", sys.executable, code).communicate(timeout=60)
    lines = out.splitlines()
    for rank in range(3):
        (env,) = [line for line in lines if line.startswith(f"[rank {rank}] env ")]
        assert env.split()[3:8] == [str(rank), "3", str(rank), "3", "127.0.0.1"]
        assert f"[rank {rank}] no newline at the end {rank}" in lines
        assert f"[rank {rank}] to stderr {rank}" in err.splitlines()
    ports = {line.split()[-1] for line in lines if " env " in line}
    assert len(ports) == 1 and ports.pop().isdigit()  # one rendezvous port for all, a free one


@pytest.mark.parametrize("user_value", [None, "3"])
def test_each_rank_gets_its_share_of_the_cores_as_omp_num_threads_unless_the_user_set_it(
        launch, script, cli_env: dict[str, str], user_value: str | None) -> None:
    # As torchrun does: N ranks each defaulting to every core would oversubscribe the machine.
    code = script("print('threads', os.environ.get('OMP_NUM_THREADS'))")
    cli_env.pop("OMP_NUM_THREADS", None)  # the same dict the launch fixture starts from
    proc = launch("-n", "2", "--", sys.executable, code,
                  env={} if user_value is None else {"OMP_NUM_THREADS": user_value})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    expected = user_value or str(max(1, len(os.sched_getaffinity(0)) // 2))
    assert sorted(line for line in out.splitlines() if " threads " in line) == [
        f"[rank {r}] threads {expected}" for r in range(2)]


def test_the_first_failing_rank_stops_the_others_and_gives_its_status(launch, script) -> None:
    code = script("""
        signal.signal(signal.SIGTERM, lambda *a: (print(f"rank {RANK} stopped by SIGTERM", flush=True), sys.exit(0)))
        print("ready", flush=True)
        if RANK == 1:
            time.sleep(0.5)
            sys.exit(7)
        time.sleep(120)
        """)
    started = time.monotonic()
    proc = launch("-n", "3", "--", sys.executable, code)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 7
    assert time.monotonic() - started < 30
    assert "[launch] rank 1 exited with status 7; stopping ranks 0, 2" in err
    assert "[rank 0] rank 0 stopped by SIGTERM" in out and "[rank 2] rank 2 stopped by SIGTERM" in out


def test_a_rank_that_ignores_sigterm_is_killed_after_the_grace_period(launch, script) -> None:
    code = script("""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        if RANK == 1:
            time.sleep(0.3)
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(120)
        """)
    proc = launch("-n", "2", "--grace", "1", "--", sys.executable, code)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGKILL  # rank 1's fate, as a shell reports it
    assert "rank 1 was killed by SIGKILL; stopping rank 0" in err
    assert "rank 0 still running after 1s: killing" in err


def test_ctrl_c_reaches_every_rank(launch, script) -> None:
    code = script("""
        signal.signal(signal.SIGINT, lambda *a: (print(f"rank {RANK} got SIGINT", flush=True), sys.exit(0)))
        print("ready", flush=True)
        time.sleep(120)
        """)
    proc = launch("-n", "2", "--", sys.executable, code)
    assert proc.stdout is not None
    ready = 0
    while ready < 2:
        line = proc.stdout.readline()
        assert line, "the launcher ended before its ranks were ready"
        ready += line.endswith("ready\n")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "[rank 0] rank 0 got SIGINT" in out and "[rank 1] rank 1 got SIGINT" in out
    assert "SIGINT: passing it to every rank" in err


@pytest.mark.parametrize("outcome", ["a rank fails", "all succeed"])
def test_no_process_is_left_behind(launch, script, tmp_path: Path, outcome: str) -> None:
    code = script(f"""
        import subprocess
        child = subprocess.Popen(["sleep", "300"])  # a rank's own child, never waited for
        open(os.path.join({str(tmp_path)!r}, f"pids{{RANK}}"), "w").write(f"{{os.getpid()}} {{child.pid}}")
        time.sleep(0.5)
        sys.exit(3 if RANK == 1 and {outcome == "a rank fails"} else 0)
        """)
    proc = launch("-n", "2", "--", sys.executable, code)
    proc.communicate(timeout=60)
    assert proc.returncode == (3 if outcome == "a rank fails" else 0)
    pids = [int(p) for rank in range(2) for p in (tmp_path / f"pids{rank}").read_text().split()]
    assert _wait_dead(pids) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_ranks_die_with_a_killed_launcher(launch, script, tmp_path: Path) -> None:
    code = script(f"""
        open(os.path.join({str(tmp_path)!r}, f"pid{{RANK}}"), "w").write(str(os.getpid()))
        print("ready", flush=True)
        time.sleep(120)
        """)
    proc = launch("-n", "2", "--", sys.executable, code)
    assert proc.stdout is not None
    for _ in range(2):
        assert proc.stdout.readline().endswith("ready\n")
    proc.kill()  # SIGKILL: the launcher cannot clean up, the kernel does
    proc.communicate()
    pids = [int((tmp_path / f"pid{rank}").read_text()) for rank in range(2)]
    assert _wait_dead(pids) == []


def test_backend_ring_gives_each_rank_a_valid_ring_config_in_a_folder_removed_afterwards(launch, script) -> None:
    code = script("""
        print("config " + os.environ["RING_CONFIG"] + " " + open(os.environ["RING_CONFIG"]).read().replace("\\n", ""))
        time.sleep(0.5)  # both ranks have printed before either ends
        """)
    out, err = launch("-n", "4", "--backend", "ring", "--", sys.executable, code).communicate(timeout=60)
    assert err == ""
    seen = {}
    for line in out.splitlines():
        prefix, _, rest = line.partition(" config ")
        path, _, data = rest.partition(" ")
        seen[int(prefix.split()[1].rstrip("]"))] = (path, json.loads(data))
    assert sorted(seen) == [0, 1, 2, 3]
    assert [seen[r][1]["rank"] for r in range(4)] == [0, 1, 2, 3]
    assert {seen[r][1]["master_ip"] for r in range(4)} == {"127.0.0.1"}
    assert not any(Path(p).exists() for p, _ in seen.values())  # the launcher's folder is gone


def test_the_same_set_validates_as_a_ring(tmp_path: Path) -> None:
    from mistralrs_torch_ring import plugin

    paths = [plugin.mistralrs_launch_environment(feature="ring", rank=r, world_size=8, master_addr="127.0.0.1",
                                                 master_port=65530, workdir=str(tmp_path))["RING_CONFIG"]
             for r in range(8)]
    assert check_ring_configs(paths)[1] == []  # even with a master port at the top of the range


@pytest.mark.parametrize(("args", "code", "words"), [
    (["-n", "2", "--backend", "mkl", "--", "true"], 1, "--backend 'mkl' is not an installed collective feature"),
    (["-n", "2", "--backend", "nccl", "--", "true"], 1, "nccl needs an NVIDIA GPU"),
    (["-n", "3", "--backend", "ring", "--", "true"], 1, "ring needs a power of two >= 2 ranks, and -n 3 is not"),
    (["-n", "2", "--", "/nonexistent/command"], 1, "cannot start '/nonexistent/command'"),
    (["-n", "4096", "--backend", "ring", "--", "/nonexistent/command"], 1, "cannot start '/nonexistent/command'"),
    (["-n", "0", "--", "true"], 2, "0 is not in the range 1<=x<=4096"),
    (["-n", "1000000000", "--", "true"], 2, "is not in the range 1<=x<=4096"),
    (["-n", "2"], 2, "Missing argument 'COMMAND...'"),
    (["-n", "2", "--backend", "", "--", "true"], 1, "--backend '' is not an installed collective feature"),
    (["-n", "2", "--grace", "nan", "--", "true"], 2, "--grace 'nan' is not a number of seconds"),
    (["-n", "2", "--grace", "1e308", "--", "true"], 2, "give 0..3600 seconds"),
    (["-n", "2", "--master-addr", "no such host!", "--", "true"], 1, "is neither an IP address nor a host name"),
    (["-n", "2", "--master-addr", "nonexistent.invalid", "--", "true"], 1, "cannot be resolved"),
    (["-n", "2", "--master-addr", "192.0.2.1", "--", "true"], 1, "is not an address of this machine"),
])
def test_bad_launches_fail_before_any_rank_runs(launch, args: list[str], code: int, words: str) -> None:
    if "nccl" in args and probe_system(environ={}).gpus_of("nvidia"):
        pytest.skip("an NVIDIA GPU is visible here")
    started = time.monotonic()
    proc = launch(*args)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code and words in err, err
    assert "Traceback" not in err and out == ""
    # Validated before anything is built (-n 4096 --backend ring once spent 20 minutes on config files first).
    assert time.monotonic() - started < 30


def test_a_port_in_use_is_refused_before_any_rank_runs(launch) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        proc = launch("-n", "2", "--master-port", str(port), "--", "true")
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and f"--master-port {port} is already in use" in err, err


_COLLECTIVE_LOOP = """
    from pathlib import Path
    import torch
    from mistralrs_torch import Runtime
    comm = Runtime.create().communicator()
    Path(os.environ["PIDS"], str(RANK)).write_text(str(os.getpid()))
    t = torch.ones(1 << 20)
    comm.all_reduce(t)
    print("LOOPING", flush=True)
    while True:  # almost all of the time inside gloo's all_reduce, where SIGINT waits for it to return
        comm.all_reduce(t)
"""


def test_ctrl_c_stops_four_ranks_inside_a_collective_within_the_grace(launch, script, tmp_path: Path) -> None:
    grace = 2.0
    pids = tmp_path / "pids"
    pids.mkdir()
    env = {"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "MISTRALRS_COLLECTIVE_TIMEOUT": "120",
           "MISTRALRS_RENDEZVOUS_TIMEOUT": "150", "PIDS": str(pids)}
    proc = launch("-n", "4", "--backend", "ring", "--grace", str(grace), "--", sys.executable,
                  script(_COLLECTIVE_LOOP), env=env)
    assert proc.stdout is not None
    looping = 0
    while looping < 4:
        line = proc.stdout.readline()
        assert line, f"the launcher ended before its ranks looped: {proc.stderr.read() if proc.stderr else ''}"
        looping += line.endswith("LOOPING\n")
    time.sleep(0.5)  # every rank deep in its loop
    proc.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    _out, err = proc.communicate(timeout=60)
    took = time.monotonic() - interrupted
    print(f"Ctrl-C to 4 ranks in all_reduce: launcher exited after {took:.2f}s (grace {grace:g}s)")
    assert proc.returncode == 130, err
    assert took < grace + 1.5, err  # SIGINT, SIGTERM at half the grace, SIGKILL at the grace: never later
    assert _wait_dead([int(p.read_text()) for p in pids.iterdir()], seconds=5) == []


@pytest.mark.skipif(os.name != "posix", reason="stale folders are found by their free file lock (POSIX flock)")
def test_the_folder_of_a_killed_launcher_is_removed_by_the_next_launch(launch, script) -> None:
    code = script("""
        print("config " + os.environ["RING_CONFIG"], flush=True)
        time.sleep(120)
        """)
    proc = launch("-n", "2", "--backend", "ring", "--", sys.executable, code)
    assert proc.stdout is not None
    folders = {Path(proc.stdout.readline().split("config ", 1)[1].strip()).parents[1] for _ in range(2)}
    (folder,) = folders
    proc.kill()  # SIGKILL: the launcher cannot remove its folder; its ranks die with it (Linux)
    proc.communicate()
    assert folder.is_dir()
    later = launch("-n", "2", "--backend", "ring", "--", "true")
    later.communicate(timeout=60)
    assert later.returncode == 0 and not folder.exists()


def test_a_live_launchers_folder_is_never_swept(tmp_path: Path) -> None:
    from mistralrs_torch.parallel._launch_folder import LaunchFolder

    with LaunchFolder() as first:
        stale = Path(first).parent / "stale-launch"
        stale.mkdir(exist_ok=True)
        (stale / ".lock").write_text("")  # a folder whose launcher is gone: nobody holds its lock
        with LaunchFolder() as second:
            assert Path(first).is_dir() and Path(second).is_dir() and not stale.exists()
        assert not Path(second).exists()
    assert not Path(first).exists()
