"""Tensor-parallel layers whose weights each rank reads as its own slice straight from a safetensors file.

A column-parallel linear splits the output features: rank r holds rows
[r*out/N, (r+1)*out/N) of the (out, in) weight and computes that part of the
output. A row-parallel linear splits the input features: rank r holds the
matching columns, computes a partial product from its part of the input, and
the partial products are summed by an all_reduce through the active
communicator. A gated MLP is column (gate, up) then row (down), with one
all_reduce per block. Attention projections are given their layer's
:class:`AttentionHeads` and split by whole heads (:mod:`._sharding`).

No rank reads a whole tensor: sharded weights are read as their slice, and
replicated tensors (biases after a row-parallel reduce, norms) are read as
1/N each and assembled with an all_gather, so N ranks read the file once.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from os import PathLike
from typing import Any

import torch
import torch.nn.functional as F

from mistralrs_torch._errors import ConfigError, UnsupportedCallError
from mistralrs_torch.ops import Communicator
from mistralrs_torch.parallel._sharding import AttentionHeads, column_slice, row_slice
from mistralrs_torch.runtime._loading import TensorSlice, load_safetensors

Path = str | PathLike[str]


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from the safetensors header alone (reads no tensor data)."""
    try:
        with open(path, "rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(length))
    except (OSError, struct.error, ValueError) as exc:
        raise ConfigError(f"{path} is not a readable safetensors file ({exc}): check the path") from None
    return {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}


def rank_device(runtime: Any, communicator: Communicator) -> str:
    """The device this rank computes on: the communicator's own (NCCL: its GPU), else the runtime's default,
    which is already this rank's LOCAL_RANK-th device when several ranks share a machine's GPUs."""
    device = getattr(communicator, "device", None)
    if device is not None and not str(device).startswith("cpu"):
        return str(device)
    return str(runtime.device.torch_device)


def _read(path: Path, name: str, part: TensorSlice, device: str) -> torch.Tensor:
    return load_safetensors(path, device, names=[name], slices={name: part})[name]


def load_shard(path: Path, name: str, dim: int, communicator: Communicator, device: str,
               heads: AttentionHeads | None = None) -> torch.Tensor:
    """Rank r's slice of tensor ``name`` along ``dim`` (0: output rows, 1: input columns), read from disk alone:
    an even share, or whole attention heads when ``heads`` describes the tensor's layer."""
    shapes = tensor_shapes(path)
    if name not in shapes:
        raise ConfigError(f"{path} has no tensor {name!r}: it holds {', '.join(sorted(shapes)[:8])}")
    shape = shapes[name]
    if dim >= len(shape):
        raise ConfigError(f"tensor {name!r} in {path} has shape {list(shape)}: it has no dimension {dim} to split")
    split = column_slice if dim == 0 else row_slice
    part = split(name, shape[dim], communicator.rank, communicator.world_size, heads, where=f" in {path}")
    return _read(path, name, part, device)


def load_replicated(path: Path, name: str, communicator: Communicator, device: str) -> torch.Tensor:
    """The whole tensor ``name`` on every rank, each rank reading only ceil(n/N) rows and all-gathering the rest."""
    shapes = tensor_shapes(path)
    if name not in shapes:
        raise ConfigError(f"{path} has no tensor {name!r}: it holds {', '.join(sorted(shapes)[:8])}")
    shape, world = shapes[name], communicator.world_size
    if world == 1 or not shape:
        return load_safetensors(path, device, names=[name])[name]
    rows = shape[0]
    per = math.ceil(rows / world)
    start = min(rows, communicator.rank * per)
    stop = min(rows, start + per)
    part = _read(path, name, TensorSlice(0, start, stop), device)
    if stop - start < per:  # all_gather needs equal parts: pad the short last ones
        pad = torch.zeros((per - (stop - start), *shape[1:]), dtype=part.dtype, device=part.device)
        part = torch.cat([part, pad])
    return torch.cat(communicator.all_gather(part))[:rows]


class ColumnParallelLinear:
    """y_r = x @ W_r.T + b_r, with rank r holding output features [r*out/N, (r+1)*out/N).

    With ``gather_output`` the parts are all-gathered into the full output; by
    default the output stays sharded for a following :class:`RowParallelLinear`.
    Given its layer's ``heads``, a q/k/v projection splits by whole heads, and
    key/value heads fewer than the ranks are replicated (see :mod:`._sharding`);
    without it the rows split evenly, which suits MLP projections only (a
    tensor named q_proj, k_proj, v_proj or o_proj is refused without ``heads``).
    Replicated heads cannot be gathered (the copies would repeat).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, runtime: Any,
                 communicator: Communicator, gather_output: bool = False) -> None:
        self.weight, self.bias = weight, bias
        self.runtime, self.communicator, self.gather_output = runtime, communicator, gather_output

    @classmethod
    def from_safetensors(cls, runtime: Any, communicator: Communicator, path: Path, weight: str,
                         bias: str | None = None, *, gather_output: bool = False, device: str | None = None,
                         dtype: torch.dtype | None = None, heads: AttentionHeads | None = None,
                         ) -> ColumnParallelLinear:
        device = device or rank_device(runtime, communicator)
        w = load_shard(path, weight, 0, communicator, device, heads)
        if gather_output and w.shape[0] * communicator.world_size != tensor_shapes(path)[weight][0]:
            raise ConfigError(f"{weight!r} in {path} has fewer heads than ranks, so each rank holds a copy of one: "
                              "gathering the copies would repeat heads; leave gather_output off")
        b = load_shard(path, bias, 0, communicator, device, heads) if bias else None
        if dtype is not None:
            w, b = w.to(dtype), None if b is None else b.to(dtype)
        return cls(w, b, runtime=runtime, communicator=communicator, gather_output=gather_output)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self.runtime.linear(x, self.weight, self.bias)
        if not self.gather_output or self.communicator.world_size == 1:
            return y
        return torch.cat(self.communicator.all_gather(y.contiguous()), dim=-1)


class RowParallelLinear:
    """y = sum_r x_r @ W_r.T + b, with rank r holding input features [r*in/N, (r+1)*in/N).

    ``x`` is this rank's part of the input (a column-parallel output); the
    partial products are all-reduced, then the bias is added once. Given its
    layer's ``heads``, an output projection (o_proj) takes the columns of this
    rank's query heads.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, runtime: Any,
                 communicator: Communicator) -> None:
        self.weight, self.bias = weight, bias
        self.runtime, self.communicator = runtime, communicator
        self.in_features = weight.shape[1] * communicator.world_size

    @classmethod
    def from_safetensors(cls, runtime: Any, communicator: Communicator, path: Path, weight: str,
                         bias: str | None = None, *, device: str | None = None,
                         dtype: torch.dtype | None = None, heads: AttentionHeads | None = None) -> RowParallelLinear:
        device = device or rank_device(runtime, communicator)
        w = load_shard(path, weight, 1, communicator, device, heads)
        b = load_replicated(path, bias, communicator, device) if bias else None
        if dtype is not None:
            w, b = w.to(dtype), None if b is None else b.to(dtype)
        return cls(w, b, runtime=runtime, communicator=communicator)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.weight.shape[1]:
            raise UnsupportedCallError(
                f"row-parallel linear on rank {self.communicator.rank} takes its {self.weight.shape[1]} of "
                f"{self.in_features} input features, got {x.shape[-1]}: feed it the sharded output of a "
                "column-parallel layer")
        partial = self.runtime.linear(x, self.weight, None)
        if self.communicator.world_size > 1:
            partial = self.communicator.all_reduce(partial.contiguous(), "sum")
        return partial if self.bias is None else partial + self.bias


class ParallelMLP:
    """A gated transformer MLP, down(silu(gate(x)) * up(x)): gate and up column-parallel, down row-parallel.

    ``names`` maps "gate", "up", "down" to weight names (biases, when the file
    has ``<name minus .weight>.bias``, are used too).
    """

    DEFAULT_NAMES: Mapping[str, str] = {"gate": "gate_proj.weight", "up": "up_proj.weight", "down": "down_proj.weight"}

    def __init__(self, gate: ColumnParallelLinear, up: ColumnParallelLinear, down: RowParallelLinear) -> None:
        self.gate, self.up, self.down = gate, up, down

    @classmethod
    def from_safetensors(cls, runtime: Any, communicator: Communicator, path: Path, prefix: str = "", *,
                         names: Mapping[str, str] | None = None, device: str | None = None,
                         dtype: torch.dtype | None = None) -> ParallelMLP:
        names = {k: prefix + v for k, v in (names or cls.DEFAULT_NAMES).items()}
        shapes = tensor_shapes(path)

        def bias(weight: str) -> str | None:
            name = weight.removesuffix(".weight") + ".bias"
            return name if weight.endswith(".weight") and name in shapes else None

        kwargs: dict[str, Any] = {"device": device, "dtype": dtype}
        args = (runtime, communicator, path)
        return cls(ColumnParallelLinear.from_safetensors(*args, names["gate"], bias(names["gate"]), **kwargs),
                   ColumnParallelLinear.from_safetensors(*args, names["up"], bias(names["up"]), **kwargs),
                   RowParallelLinear.from_safetensors(*args, names["down"], bias(names["down"]), **kwargs))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))
