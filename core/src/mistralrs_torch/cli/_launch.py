"""``mistralrs launch -n N [--backend FEATURE] -- COMMAND``: N local ranks of one job.

The command is defined here; the machinery (mistralrs_torch.parallel._launcher) is
imported only when it runs, so `mistralrs plugins list` does not pay for
subprocess, sockets and threads. Existing launchers (torchrun, Slurm) keep
working without this command: the collective plugins read the same variables.
Everything is validated before anything is prepared: the values, the command,
the address and port, then the backend; the ranks' environments are built once.
"""

from __future__ import annotations

import sys
from typing import Any

import click

#: Ranks one launch may start on this machine (each is a process).
MAX_LOCAL_RANKS = 4096
#: The longest grace period: an hour.
_MAX_GRACE = 3600.0


class _Grace(click.ParamType):
    name = "SECONDS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        from mistralrs_torch._errors import InputError
        from mistralrs_torch.validation import parse_seconds

        if isinstance(value, float):
            return value
        if str(value).strip() in ("0", "0.0"):
            return 0.0
        try:
            return parse_seconds(str(value), "--grace", _MAX_GRACE)
        except InputError as exc:
            self.fail(f"{exc.source} {exc.problem}: give 0..{_MAX_GRACE:g} seconds, e.g. --grace 5", param, ctx)


@click.command("launch", context_settings={"allow_interspersed_args": False})
@click.option("-n", "--nproc", type=click.IntRange(1, MAX_LOCAL_RANKS), required=True,
              help=f"Number of ranks to start (at most {MAX_LOCAL_RANKS}).")
@click.option("--backend", default=None, metavar="FEATURE",
              help="Collective feature the ranks use (`mistralrs plugins list` shows them): its plugin adds what "
                   "each rank needs, such as a configuration file. Without it the ranks get only the torchrun "
                   "variables.")
@click.option("--master-addr", default="127.0.0.1", show_default=True,
              help="Rendezvous address: one of this machine's (rank 0 listens there).")
@click.option("--master-port", type=click.IntRange(0, 65535), default=0,
              help="Rendezvous port [default: a free one].")
@click.option("--grace", type=_Grace(), default=5.0, show_default=True,
              help="Seconds the other ranks get to exit after a failure or Ctrl-C before they are killed "
                   "(after Ctrl-C, ranks still running at half of it get SIGTERM).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def launch_command(nproc: int, backend: str | None, master_addr: str, master_port: int, grace: float,
                   command: tuple[str, ...]) -> None:
    """Start N local ranks of COMMAND (after `--`), each output line prefixed [rank K].

    Ctrl-C reaches every rank; the first rank that fails stops the others, and its exit status is the
    launcher's. Each rank gets OMP_NUM_THREADS = cores / N unless it is set. Example:
    mistralrs launch -n 2 --backend ring -- mistralrs run -m MODEL --prompt "Hello"
    """
    from mistralrs_torch.parallel._launch_folder import LaunchFolder
    from mistralrs_torch.parallel._launcher import check_command, launch, rank_environments, rendezvous_port

    check_command(command)
    port = rendezvous_port(master_addr, master_port)
    with LaunchFolder() as workdir:
        envs = rank_environments(nproc, backend, master_addr, port, workdir)
        code = launch(command, envs, grace)
    sys.exit(code)
