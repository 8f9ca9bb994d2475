"""Entry point of mistralrs-torch-ring: registers the ring feature and its hooks. Imports no torch.

Each hook imports its module only when called, so discovery, `plugins list`
and `doctor --no-verify` stay light.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from mistralrs_torch import FeatureManifest, hookimpl
from mistralrs_torch_ring._manifest import RING

if TYPE_CHECKING:
    import click

    from mistralrs_torch.ops import CheckResult, CollectiveBackend


@hookimpl
def mistralrs_features() -> tuple[FeatureManifest, ...]:
    return (RING,)


@hookimpl
def mistralrs_collective_backends(active: frozenset[str]) -> tuple[CollectiveBackend, ...]:
    if RING.name not in active:
        return ()
    from mistralrs_torch_ring._backend import GlooCollectives

    return (GlooCollectives(),)


@hookimpl
def mistralrs_doctor_checks(active: frozenset[str], environ: Mapping[str, str]) -> tuple[CheckResult, ...]:
    from mistralrs_torch_ring._doctor import ring_checks

    return tuple(ring_checks(active, environ))


@hookimpl
def mistralrs_cli_commands() -> tuple[click.Command, ...]:
    from mistralrs_torch_ring._cli import ring

    return (ring,)


@hookimpl
def mistralrs_launch_environment(feature: str, rank: int, world_size: int, master_addr: str, master_port: int,
                                 workdir: str) -> Mapping[str, str] | None:
    if feature != RING.name:
        return None
    from mistralrs_torch_ring._launch import launch_environment

    return launch_environment(rank, world_size, master_addr, master_port, workdir)
