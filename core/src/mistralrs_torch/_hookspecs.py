"""Every hook a mistralrs plugin can implement, with its contract.

The core calls these only from :mod:`mistralrs_torch.plugins._manager`, once per
plugin and never per op: at discovery (features), probing (system), binding
(devices and backends) and diagnosis (doctor checks). Each implementation is
called on its own, so one raising plugin is quarantined without sinking the
others. Returning None means "nothing to add".

Implementations are marked with :data:`hookimpl`; a function named
``mistralrs_*`` that matches no spec below makes the plugin broken (a
misspelled hook must not be silently ignored).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from mistralrs_torch.features import FeatureManifest
    from mistralrs_torch.ops import (
        AttentionBackend,
        CheckResult,
        CollectiveBackend,
        Device,
        LayerBackend,
        MatmulBackend,
    )
    from mistralrs_torch.system import SystemSnapshot

PROJECT = "mistralrs"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def mistralrs_features() -> Sequence[FeatureManifest]:
    """Return the manifests of the features this plugin ships.

    Called once at discovery. Must be cheap: build frozen data, import no torch
    and no vendor library. Every manifest's ``api_version`` must be one this
    core supports, and its name must not clash with another plugin's feature.
    """


@hookspec
def mistralrs_probe_system(system: SystemSnapshot) -> Mapping[str, str] | None:
    """Return library facts this plugin knows how to read cheaply (name -> version, "" if unknown).

    Called once per probe of the real machine, never for a loaded profile. Must
    not import torch or create a device context. Facts are merged into
    ``SystemSnapshot.libraries``; a later plugin cannot overwrite a core fact.
    """


@hookspec
def mistralrs_devices(active: frozenset[str], system: SystemSnapshot) -> Sequence[Device] | None:
    """Return the devices this plugin drives when its device feature is in ``active``.

    Called once when a runtime is bound. May import torch.
    """


@hookspec
def mistralrs_attention_backends(active: frozenset[str], system: SystemSnapshot,
                                 environ: Mapping[str, str]) -> Sequence[AttentionBackend] | None:
    """Return attention backends for this plugin's features that are in ``active``.

    Called once when a runtime is bound; the runtime orders all backends by
    ``dispatch_priority`` and asks each ``supports(call)`` per call signature.
    The ops of this kind (attention, paged_attention, write_kv_cache) and their
    contract are the op registry's: see docs/plugin-api.md. ``system`` is
    the snapshot the selection was resolved on and ``environ`` the runtime's
    environment: read settings and machine facts from them (never probe again
    or read os.environ), so a runtime built for another environment is honoured.
    An implementation may omit parameters it does not use.
    """


@hookspec
def mistralrs_matmul_backends(active: frozenset[str], system: SystemSnapshot,
                              environ: Mapping[str, str]) -> Sequence[MatmulBackend] | None:
    """Return matmul backends for this plugin's features that are in ``active``.

    Called once when a runtime is bound; ``system`` and ``environ`` as for
    :func:`mistralrs_attention_backends`.
    """


@hookspec
def mistralrs_layer_backends(active: frozenset[str], system: SystemSnapshot,
                             environ: Mapping[str, str]) -> Sequence[LayerBackend] | None:
    """Return layer backends (rms_norm, rotary_embedding) for this plugin's features that are in ``active``.

    Called once when a runtime is bound; ``system`` and ``environ`` as for
    :func:`mistralrs_attention_backends`.
    """


@hookspec
def mistralrs_collective_backends(active: frozenset[str]) -> Sequence[CollectiveBackend] | None:
    """Return collective backends for this plugin's features that are in ``active``.

    Called once when a runtime is bound.
    """


@hookspec
def mistralrs_doctor_checks(active: frozenset[str], system: SystemSnapshot,
                            environ: Mapping[str, str]) -> Sequence[CheckResult] | None:
    """Return this plugin's own configuration checks (RING_CONFIG, MISTRALRS_NO_NCCL, ...).

    Called by ``mistralrs doctor``. A check that fails returns a CheckResult with
    status "error" or "warning" and a fix; it must not raise for bad user input.
    ``environ`` is the environment being diagnosed: judge variables there, not in
    os.environ. An implementation may omit parameters it does not use.
    """


@hookspec
def mistralrs_cli_commands() -> Sequence[click.Command] | None:
    """Return click commands this plugin adds to the ``mistralrs`` CLI (``mistralrs ring configs``).

    Called only when the CLI looks up a command that is not built in, or lists
    commands for --help. A name that clashes with a built-in command is ignored.
    """


@hookspec
def mistralrs_launch_environment(feature: str, rank: int, world_size: int, master_addr: str, master_port: int,
                                 workdir: str) -> Mapping[str, str] | None:
    """Return extra environment variables for one rank started by ``mistralrs launch --backend FEATURE``.

    Called once per rank, before it starts, only on the plugin that ships
    ``feature``; the launcher already sets RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR and MASTER_PORT. ``workdir`` is a private folder for files such
    as per-rank configuration; it lives until the launch ends.
    """
