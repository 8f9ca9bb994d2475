"""ring for real: 2 and 4 processes over loopback, every collective and dtype, and a killed or frozen rank.

Each rank is `_ring_worker.py` started with its own RING_CONFIG, GLOO_SOCKET_IFNAME=lo and
OMP_NUM_THREADS=1 (4 ranks share 2 cores here), in its own process group, which is killed
when the test ends however it ends.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mistralrs_torch_ring._config import ring_config_set, write_ring_configs

pytestmark = pytest.mark.multiprocess

WORKER = Path(__file__).with_name("_ring_worker.py")
#: Collective timeout of the fault tests, in seconds: long enough for a loaded 2-core machine to keep up.
TIMEOUT = 5.0
#: What a survivor may take beyond the timeout: naming the culprit (up to ~2 heartbeat windows) and exiting.
SLACK = 12.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Ranks:
    """One process per rank, output in files, every process group killed at the end."""

    def __init__(self, folder: Path, world: int) -> None:
        self.folder, self.world = folder, world
        paths = write_ring_configs(folder / "ring", ring_config_set(world, master_port=_free_port(),
                                                                    base_port=_free_port()))
        base = {k: v for k, v in os.environ.items()
                if not k.startswith("MISTRALRS_") and k not in ("RING_CONFIG", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                "MASTER_ADDR", "MASTER_PORT", "PYTHONPATH")}
        self.envs = [{**base, "RING_CONFIG": str(p), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
                      "PYTHONUNBUFFERED": "1", "MISTRALRS_COLLECTIVE_TIMEOUT": str(TIMEOUT),
                      "MISTRALRS_RENDEZVOUS_TIMEOUT": "90"} for p in paths]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.exited: dict[int, float] = {}

    def start(self, *args: str, frozen: int | None = None) -> None:
        """Start every rank; ``frozen`` is stopped (SIGSTOP) at once, long before it could join."""
        for rank, env in enumerate(self.envs):
            with open(self.folder / f"rank{rank}.out", "wb") as out, open(self.folder / f"rank{rank}.err", "wb") as err:
                self.procs.append(subprocess.Popen([sys.executable, str(WORKER), *args], env=env, stdout=out,
                                                   stderr=err, start_new_session=True))
            if rank == frozen:
                os.kill(self.procs[-1].pid, signal.SIGSTOP)

    def port(self) -> int:
        return int(json.loads(Path(self.envs[0]["RING_CONFIG"]).read_text())["master_port"])

    def output(self, rank: int) -> str:
        return (self.folder / f"rank{rank}.out").read_text(errors="replace")

    def errors(self, rank: int) -> str:
        return (self.folder / f"rank{rank}.err").read_text(errors="replace")[-3000:]

    def wait_for(self, text: str, deadline: float) -> None:
        while not all(text in self.output(r) for r in range(self.world)):
            failed = [r for r, p in enumerate(self.procs) if p.poll() is not None]
            assert not failed, f"rank {failed[0]} ended early: {self.errors(failed[0])}"
            assert time.monotonic() < deadline, f"not every rank printed {text!r} in time"
            time.sleep(0.05)

    def wait(self, ranks: list[int], deadline: float) -> None:
        while any(self.procs[r].poll() is None for r in ranks):
            for r in ranks:
                if self.procs[r].returncode is not None:
                    self.exited.setdefault(r, time.monotonic())
            assert time.monotonic() < deadline, \
                f"ranks {[r for r in ranks if self.procs[r].poll() is None]} still running: " \
                + " | ".join(self.errors(r) for r in ranks)
            time.sleep(0.05)
        for r in ranks:
            self.exited.setdefault(r, time.monotonic())

    def result(self, rank: int) -> dict:
        lines = [line for line in self.output(rank).splitlines() if line.startswith("RESULT ")]
        assert lines, f"rank {rank} printed no result: {self.errors(rank)}"
        return json.loads(lines[-1].removeprefix("RESULT "))

    def kill(self) -> None:
        for proc in self.procs:
            for sig in (signal.SIGCONT, signal.SIGKILL):  # a stopped process must be woken to die
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
            proc.wait(timeout=30)


@pytest.fixture
def ranks(tmp_path: Path) -> Iterator[type]:
    started: list[Ranks] = []

    def make(world: int) -> Ranks:
        started.append(Ranks(tmp_path, world))
        return started[-1]

    yield make  # type: ignore[misc]  # a generator fixture typed as what it yields
    for group in started:
        group.kill()


@pytest.mark.parametrize("world", [2, 4])
def test_every_collective_and_dtype_across_ranks(ranks: type, world: int) -> None:
    group = ranks(world)
    group.start("collectives")
    group.wait(list(range(world)), time.monotonic() + 240)
    assert [p.returncode for p in group.procs] == [0] * world, [group.errors(r) for r in range(world)]
    results = [group.result(r) for r in range(world)]
    assert [r["rank"] for r in results] == list(range(world))
    # gloo's reduction is deterministic: every rank ends with the very same bits, hence the same errors.
    assert len({json.dumps({k: v for k, v in r.items() if k != "rank"}, sort_keys=True) for r in results}) == 1
    assert results[0]["float16 error"] > 0 and results[0]["bfloat16 error"] > 0  # the data did get reduced


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=pytest.mark.gpu),
                                    pytest.param("mps", marks=pytest.mark.mps)])
def test_accelerator_tensors_go_through_host_memory(ranks: type, device: str) -> None:
    group = ranks(2)
    group.start("collectives", device)
    group.wait([0, 1], time.monotonic() + 240)
    assert [p.returncode for p in group.procs] == [0, 0], [group.errors(r) for r in range(2)]
    assert group.result(0)["bfloat16 error"] == group.result(1)["bfloat16 error"]


def _check_failure(result: dict, rank: int, culprit: int) -> None:
    seen = (result["rank"], result["error_rank"], result["peers"], result["timeout"])
    assert seen == (rank, rank, [culprit], TIMEOUT)
    message = result["message"]
    assert message.startswith(f"rank {rank} of ") and f"rank {culprit} stopped responding" in message
    assert f"collective timeout {TIMEOUT:g}s" in message and "MISTRALRS_COLLECTIVE_TIMEOUT" in message


def test_a_killed_rank_makes_every_survivor_fail_naming_it(ranks: type) -> None:
    group = ranks(4)
    group.start("fault", "2", "kill")  # rank 2 SIGKILLs itself half a second into its all_reduce loop
    group.wait_for("LOOPING", time.monotonic() + 150)
    group.wait([2], time.monotonic() + 30)
    assert group.procs[2].returncode == -signal.SIGKILL
    died = group.exited[2]
    survivors = [0, 1, 3]
    group.wait(survivors, died + TIMEOUT + SLACK)
    for r in survivors:
        assert group.procs[r].returncode == 3, group.errors(r)
        _check_failure(group.result(r), r, 2)
        assert group.exited[r] - died < TIMEOUT + SLACK


@pytest.mark.parametrize("victim", [1, 0], ids=["rank 1 frozen", "rank 0 (store host) frozen"])
def test_a_frozen_rank_makes_the_survivor_fail_within_the_timeout(ranks: type, victim: int) -> None:
    group = ranks(2)
    group.start("fault", str(victim), "stop")
    group.wait_for("LOOPING", time.monotonic() + 150)
    time.sleep(0.3)  # well inside the all_reduce loop
    os.kill(group.procs[victim].pid, signal.SIGSTOP)
    stopped = time.monotonic()
    survivor = 1 - victim
    group.wait([survivor], stopped + TIMEOUT + SLACK)
    assert group.procs[survivor].returncode == 3, group.errors(survivor)
    result = group.result(survivor)
    _check_failure(result, survivor, victim)
    if victim == 0:
        assert "the rendezvous store it hosts" in result["message"]
    # It waited for the timeout, not less: a frozen peer keeps its connections open.
    assert group.exited[survivor] - stopped >= TIMEOUT - 0.5
    assert group.procs[victim].poll() is None  # still frozen: the survivor did not need it to die


#: Rendezvous timeout of the start-up fault test, and what a survivor may take beyond it: rank 0 waits up to a
#: second for the others to read its verdict, and a rank's last poll of the store may be a tenth late.
JOIN_TIMEOUT, JOIN_SLACK = 4.0, 2.0


def test_a_rank_frozen_before_it_joins_is_named_by_every_survivor_within_the_timeout(ranks: type) -> None:
    group = ranks(4)
    for env in group.envs:
        env["MISTRALRS_RENDEZVOUS_TIMEOUT"] = str(JOIN_TIMEOUT)
    group.start("join", frozen=2)
    survivors = [0, 1, 3]
    group.wait(survivors, time.monotonic() + 150)  # bounded: importing torch on 4 ranks takes a while here
    for r in survivors:
        assert group.procs[r].returncode == 3, group.errors(r)
        result = group.result(r)
        assert result["peers"] == [2] and result["rank"] == r and result["timeout"] == JOIN_TIMEOUT, result
        assert "rank 2 never joined" in result["message"] and "joined: 0, 1, 3" in result["message"], result
        # The whole start-up wait is bounded by the timeout, as the message says (torch's retries included).
        assert result["waited"] < JOIN_TIMEOUT + JOIN_SLACK, result
        assert "frame #" not in group.errors(r) and "[W" not in group.errors(r), group.errors(r)  # torch kept quiet
    print("start-up fault: seconds each survivor waited:", {r: round(group.result(r)["waited"], 2) for r in survivors})
    assert group.procs[2].poll() is None  # still frozen; the fixture wakes and kills it


def test_a_store_host_frozen_at_start_up_fails_the_others_within_the_timeout(ranks: type) -> None:
    """Rank 0 listens, then freezes: the kernel still accepts connections on its behalf, and torch's own store
    client once waited about twice the timeout there. Rank 1's whole start-up stays within its timeout."""
    group = ranks(2)
    go = group.folder / "go"
    group.envs[0]["MISTRALRS_RENDEZVOUS_TIMEOUT"] = "120"
    group.envs[1].update(MISTRALRS_RENDEZVOUS_TIMEOUT=str(JOIN_TIMEOUT), RING_WORKER_GO=str(go))
    group.start("join")  # rank 1 imports meanwhile, and starts its rendezvous only once rank 0 is frozen
    deadline = time.monotonic() + 150
    while True:  # until rank 0's store listens
        assert group.procs[0].poll() is None and time.monotonic() < deadline, group.errors(0)
        try:
            socket.create_connection(("127.0.0.1", group.port()), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    os.kill(group.procs[0].pid, signal.SIGSTOP)
    go.touch()
    group.wait([1], time.monotonic() + 150)
    assert group.procs[1].returncode == 3, group.errors(1)
    result = group.result(1)
    assert result["peers"] == [0] and result["waited"] < JOIN_TIMEOUT + JOIN_SLACK, result
    assert "rank 0" in result["message"] and "frame #" not in group.errors(1)
    print(f"store host frozen at start-up: rank 1 waited {result['waited']:.2f}s (timeout {JOIN_TIMEOUT:g}s)")
