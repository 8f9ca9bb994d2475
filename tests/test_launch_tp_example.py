"""The issue's check: `mistralrs launch -n 4 --backend ring -- python examples/tp_mlp.py`.

It prints the single run's checksum.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.multiprocess

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tp_mlp.py"


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:  # the launcher and every rank it started, even if the test times out
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _checksum(output: str) -> str:
    (line,) = [line for line in output.splitlines() if "checksum " in line]
    return line.split("checksum ", 1)[1]


def test_four_ranks_print_the_single_process_checksum(tmp_path: Path, cli_env: dict[str, str]) -> None:
    weights = tmp_path / "mlp.safetensors"
    single = _run([sys.executable, str(EXAMPLE), "--weights", str(weights)], cli_env, tmp_path)
    assert single.returncode == 0, single.stderr
    assert "world size 1" in single.stdout and weights.exists()
    env = {
        **cli_env,
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        "MISTRALRS_COLLECTIVE_TIMEOUT": "60",
        "MISTRALRS_RENDEZVOUS_TIMEOUT": "120",
    }
    tp = _run(
        [
            sys.executable,
            "-m",
            "mistralrs_torch",
            "launch",
            "-n",
            "4",
            "--backend",
            "ring",
            "--",
            sys.executable,
            str(EXAMPLE),
            "--weights",
            str(weights),
        ],
        env,
        tmp_path,
    )
    assert tp.returncode == 0, tp.stderr[-3000:]
    assert "[rank 0] tp_mlp: world size 4" in tp.stdout
    assert _checksum(tp.stdout) == _checksum(single.stdout)


def test_torchrun_launches_the_same_job_without_mistralrs_launch(tmp_path: Path, cli_env: dict[str, str]) -> None:
    # torchrun's agent hosts the rendezvous store (TORCHELASTIC_USE_AGENT_STORE): every rank joins as a client.
    weights = tmp_path / "mlp.safetensors"
    single = _run([sys.executable, str(EXAMPLE), "--weights", str(weights)], cli_env, tmp_path)
    assert single.returncode == 0, single.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **cli_env,
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        "MISTRALRS_COLLECTIVE_TIMEOUT": "60",
        "MISTRALRS_RENDEZVOUS_TIMEOUT": "120",
        "MISTRALRS_FEATURES": "ring",
    }
    tp = _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(port),
            str(EXAMPLE),
            "--weights",
            str(weights),
        ],
        env,
        tmp_path,
    )
    assert tp.returncode == 0, tp.stderr[-3000:]
    assert "tp_mlp: world size 2" in tp.stdout
    assert _checksum(tp.stdout) == _checksum(single.stdout)
