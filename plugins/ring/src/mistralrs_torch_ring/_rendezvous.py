"""Where a ring rank meets the others: RING_CONFIG first, else the torchrun variables. Pure Python."""

from __future__ import annotations

from collections.abc import Mapping

from mistralrs_torch import ConfigError
from mistralrs_torch.parallel import Rendezvous, is_power_of_two, local_rank, torchrun_rendezvous
from mistralrs_torch_ring._config import load_ring_config


def ring_rendezvous(environ: Mapping[str, str]) -> Rendezvous:
    """This process's rendezvous from RING_CONFIG, or from RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT without it.

    ConfigError names the file and field, or the variable, at fault.
    """
    path = environ.get("RING_CONFIG", "").strip()
    torchrun = torchrun_rendezvous(environ)
    if path:
        config = load_ring_config(path)
        if torchrun is not None and (torchrun.rank, torchrun.world_size) != (config.rank, config.world_size):
            raise ConfigError(f"RING_CONFIG={path} says rank {config.rank} of {config.world_size}, but RANK="
                              f"{torchrun.rank} and WORLD_SIZE={torchrun.world_size} say otherwise: make them agree, "
                              "or unset RANK and WORLD_SIZE (RING_CONFIG alone is enough)")
        return Rendezvous(config.rank, config.world_size, config.master_ip, config.master_port, local_rank(environ),
                          source=f"RING_CONFIG={path}", addr_name="master_ip", port_name="master_port")
    if torchrun is None:
        raise ConfigError("ring is active but has no configuration: set RING_CONFIG to this process's ring JSON "
                          "file (write a set with `mistralrs ring configs --world-size N --out DIR`), start the "
                          "ranks with `mistralrs launch -n N --backend ring -- COMMAND`, or set torchrun's RANK, "
                          "WORLD_SIZE, MASTER_ADDR and MASTER_PORT")
    if torchrun.world_size < 2 or not is_power_of_two(torchrun.world_size):
        raise ConfigError(f"WORLD_SIZE={torchrun.world_size}: ring needs a power of two >= 2 (2, 4, 8, ...): "
                          "start 2, 4, 8, ... ranks, or turn ring off for a single process")
    return torchrun
