"""`mistralrs ring configs` and `mistralrs ring check`: write a valid RING_CONFIG set, check files together."""

from __future__ import annotations

import os
from typing import Any

import click

from mistralrs_torch import ConfigError
from mistralrs_torch_ring._config import (
    MAX_WORLD_SIZE,
    check_ring_config,
    check_ring_configs,
    problem_lines,
    ring_config_set,
    write_ring_configs,
)


class _Failure(click.ClickException):
    """Printed as the core CLI prints its errors: one line per problem, no traceback, exit status 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


@click.group("ring")
def ring() -> None:
    """Ring collectives (gloo over TCP): write and check RING_CONFIG files."""


@ring.command("configs")
@click.option("--world-size", "-n", type=click.IntRange(2, MAX_WORLD_SIZE), required=True,
              help="Number of processes: 2, 4, 8, ...")
@click.option("--hosts", default="127.0.0.1", show_default=True,
              help="Comma-separated addresses: one per rank, or one per machine (ranks go to machines in "
                   "contiguous blocks).")
@click.option("--master-ip", default=None, help="Rank 0's address for the rendezvous [default: the first host].")
@click.option("--master-port", type=click.IntRange(1, 65535), default=29500, show_default=True,
              help="Rendezvous port on rank 0's machine.")
@click.option("--base-port", type=click.IntRange(1, 65535), default=12345, show_default=True,
              help="First ring port on each machine (port/right_port; gloo itself picks its data ports).")
@click.option("--out", "out", type=click.Path(file_okay=False), required=True, help="Folder for rank<k>.json.")
@click.option("--force", is_flag=True, help="Overwrite existing rank<k>.json files.")
def configs_command(world_size: int, hosts: str, master_ip: str | None, master_port: int, base_port: int, out: str,
                    force: bool) -> None:
    """Write one RING_CONFIG file per rank, for this machine or a cluster."""
    try:
        configs = ring_config_set(world_size, hosts.split(","), master_ip=master_ip, master_port=master_port,
                                  base_port=base_port)
        paths = write_ring_configs(out, configs, overwrite=force)
    except ConfigError as exc:
        raise _Failure(str(exc)) from None
    _, problems = check_ring_configs(paths)
    if problems:  # the generator and the checker disagree: a bug, reported rather than hidden
        raise _Failure("\n".join(["the written set does not pass its own check:", *problem_lines(problems)]))
    click.echo(f"wrote {len(paths)} ring configurations (world size {world_size}) to {out}:")
    for path, config in zip(paths, configs, strict=True):
        host = configs[config.rank - 1].right_ip  # a rank runs where its left neighbour's right_ip points
        click.echo(f"  rank {config.rank}: on {host}: RING_CONFIG={path}")
    click.echo("the rendezvous and gloo's ports accept any peer without authentication: run ring on a trusted "
               "network only")


@ring.command("check")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
def check_command(files: tuple[str, ...]) -> None:
    """Check RING_CONFIG files: each on its own and, given several, as one ring (default: $RING_CONFIG)."""
    if not files:
        if not os.environ.get("RING_CONFIG", "").strip():
            raise _Failure("no file given and RING_CONFIG is not set: pass the files to check")
        files = (os.environ["RING_CONFIG"].strip(),)
    if len(files) == 1:
        config, problems = check_ring_config(files[0])
        configs = [config] if config else []
    else:
        configs, problems = check_ring_configs(files)
    if problems:
        raise _Failure(f"{len(problems)} problem{'s' if len(problems) > 1 else ''}:\n"
                       + "\n".join(problem_lines(problems)))
    world = configs[0].world_size
    what = "a valid ring" if len(files) > 1 else f"valid (rank {configs[0].rank})"
    click.echo(f"ok: {len(files)} file{'s' if len(files) > 1 else ''}, {what} of world size {world}")
