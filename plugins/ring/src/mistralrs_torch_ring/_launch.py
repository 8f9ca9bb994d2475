"""`mistralrs launch --backend ring`: a generated RING_CONFIG per rank, consistent with the launcher's rendezvous."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from mistralrs_torch import ConfigError
from mistralrs_torch.parallel import is_power_of_two
from mistralrs_torch_ring._config import ring_config_set


@lru_cache(maxsize=4)
def _written(world_size: int, master_addr: str, master_port: int, workdir: str) -> tuple[str, ...]:
    """The whole set, built and written once per launch: the launcher asks for it rank by rank."""
    # The ring ports are only validated (gloo picks its own), but they must still form a valid set.
    base = master_port + 1 if master_port + world_size <= 65535 else master_port - world_size
    configs = ring_config_set(world_size, [master_addr], master_ip=master_addr, master_port=master_port,
                              base_port=base)
    folder = Path(workdir) / "ring"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for config in configs:
        path = folder / f"rank{config.rank}.json"
        path.write_text(json.dumps(config.to_json(), indent=2) + "\n", encoding="utf-8")
        paths.append(str(path))
    return tuple(paths)


def launch_environment(rank: int, world_size: int, master_addr: str, master_port: int, workdir: str) -> dict[str, str]:
    if world_size < 2 or not is_power_of_two(world_size):
        raise ConfigError(f"ring needs a power of two >= 2 ranks, and -n {world_size} is not: use -n 2, 4, 8, ...")
    return {"RING_CONFIG": _written(world_size, master_addr, master_port, workdir)[rank]}
