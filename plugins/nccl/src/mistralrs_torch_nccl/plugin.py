"""Entry point of mistralrs-torch-nccl: registers the nccl feature and its hooks. Imports no torch.

The backend module (which imports torch) is imported only when a runtime binds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from mistralrs_torch import FeatureManifest, SystemSnapshot, hookimpl
from mistralrs_torch.system import installed_version
from mistralrs_torch_nccl._manifest import NCCL, NCCL_WHEELS

if TYPE_CHECKING:
    from mistralrs_torch.ops import CheckResult, CollectiveBackend


@hookimpl
def mistralrs_features() -> tuple[FeatureManifest, ...]:
    return (NCCL,)


@hookimpl
def mistralrs_probe_system(system: SystemSnapshot) -> dict[str, str]:
    version = installed_version(*NCCL_WHEELS)
    return {"nccl": version} if version is not None else {}


@hookimpl
def mistralrs_collective_backends(active: frozenset[str]) -> tuple[CollectiveBackend, ...]:
    if NCCL.name not in active:
        return ()
    from mistralrs_torch_nccl._backend import NCCLCollectives

    return (NCCLCollectives(),)


@hookimpl
def mistralrs_doctor_checks(active: frozenset[str], system: SystemSnapshot,
                            environ: Mapping[str, str]) -> tuple[CheckResult, ...]:
    from mistralrs_torch_nccl._doctor import nccl_checks

    return tuple(nccl_checks(active, system, environ))


@hookimpl
def mistralrs_launch_environment(feature: str, rank: int, world_size: int, master_addr: str, master_port: int,
                                 workdir: str) -> Mapping[str, str] | None:
    # One process per GPU: the launcher's ranks on this machine are the GPUs to use.
    return {"MISTRALRS_MN_LOCAL_WORLD_SIZE": str(world_size)} if feature == NCCL.name else None
