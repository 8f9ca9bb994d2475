"""A transformer MLP block run with tensor parallelism; prints a checksum that does not depend on the world size.

The block is x + down(silu(gate(n)) * up(n)) with n = rmsnorm(x): gate and up
are column-parallel, down is row-parallel (one all_reduce per block), and
each rank reads only its own slices of the weights from one safetensors
file. Run it alone, then on 2 or 4 ranks, and compare the checksum line:

    python examples/tp_mlp.py
    mistralrs launch -n 4 --backend ring -- python examples/tp_mlp.py

It computes in float64 so that the different order of the sums across
ranks stays far below the printed digits.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from mistralrs_torch import Runtime
from mistralrs_torch.parallel import ParallelMLP, load_replicated, rank_device

HIDDEN, INTERMEDIATE, TOKENS = 64, 256, 8


def write_weights(path: Path, seed: int) -> None:
    """The block's weights, deterministic in ``seed``, written atomically (another rank may be reading)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    tensors = {
        "norm.weight": 1 + randn(HIDDEN, scale=0.1),
        "mlp.gate_proj.weight": randn(INTERMEDIATE, HIDDEN, scale=HIDDEN**-0.5),
        "mlp.gate_proj.bias": randn(INTERMEDIATE, scale=0.1),
        "mlp.up_proj.weight": randn(INTERMEDIATE, HIDDEN, scale=HIDDEN**-0.5),
        "mlp.up_proj.bias": randn(INTERMEDIATE, scale=0.1),
        "mlp.down_proj.weight": randn(HIDDEN, INTERMEDIATE, scale=INTERMEDIATE**-0.5),
        "mlp.down_proj.bias": randn(HIDDEN, scale=0.1),
    }
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    save_file(tensors, str(partial))
    os.replace(partial, path)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", type=Path, default=None,
                        help="safetensors file to use (written by rank 0 if missing) [default: in the temp folder]")
    args = parser.parse_args()
    weights = args.weights or Path(tempfile.gettempdir()) / f"mistralrs-tp-mlp-{args.seed}.safetensors"

    runtime = Runtime.create()
    comm = runtime.communicator()
    if comm.rank == 0 and not weights.exists():
        write_weights(weights, args.seed)
    comm.barrier()  # the other ranks read the file only once rank 0 has written it

    device = rank_device(runtime, comm)
    norm = load_replicated(weights, "norm.weight", comm, device)
    mlp = ParallelMLP.from_safetensors(runtime, comm, weights, "mlp.", device=device)
    x = torch.randn(TOKENS, HIDDEN, generator=torch.Generator().manual_seed(args.seed + 1), dtype=torch.float64)
    out = x.to(device) + mlp(rms_norm(x.to(device), norm))
    if comm.rank == 0:
        print(f"tp_mlp: world size {comm.world_size}, output {list(out.shape)} on {device}")
        print(f"checksum {out.sum().item():.10e} {out.pow(2).sum().item():.10e}")


if __name__ == "__main__":
    main()
