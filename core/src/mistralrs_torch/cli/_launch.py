"""``mistralrs launch -n N [--backend FEATURE] -- COMMAND``: N local ranks of one job.

The command is defined here; the machinery (mistralrs_torch.parallel._launcher) is
imported only when it runs, so `mistralrs plugins list` does not pay for
subprocess, sockets and threads. Existing launchers (torchrun, Slurm) keep
working without this command: the collective plugins read the same variables.
"""

from __future__ import annotations

import sys

import click

__all__ = ["launch_command"]


@click.command("launch", context_settings={"allow_interspersed_args": False})
@click.option("-n", "--nproc", type=click.IntRange(min=1), required=True, help="Number of ranks to start.")
@click.option("--backend", default=None, metavar="FEATURE",
              help="Collective feature the ranks use (`mistralrs plugins list` shows them): its plugin adds what "
                   "each rank needs, such as a configuration file. Without it the ranks get only the torchrun "
                   "variables.")
@click.option("--master-addr", default="127.0.0.1", show_default=True, help="Rendezvous address (rank 0 listens).")
@click.option("--master-port", type=click.IntRange(0, 65535), default=0,
              help="Rendezvous port [default: a free one].")
@click.option("--grace", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Seconds the other ranks get to exit after a failure or Ctrl-C before they are killed.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def launch_command(nproc: int, backend: str | None, master_addr: str, master_port: int, grace: float,
                   command: tuple[str, ...]) -> None:
    """Start N local ranks of COMMAND (after `--`), each output line prefixed [rank K].

    Ctrl-C reaches every rank; the first rank that fails stops the others, and its exit status is the
    launcher's. Example: mistralrs launch -n 4 --backend ring -- python examples/tp_mlp.py
    """
    import shutil
    import tempfile

    from mistralrs_torch.parallel._launcher import free_port, launch, rank_environments

    port = master_port or free_port(master_addr)
    workdir = tempfile.mkdtemp(prefix="mistralrs-launch-")
    try:
        envs = rank_environments(nproc, backend, master_addr, port, workdir)
        code = launch(command, envs, grace)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(code)
