"""Loading safetensors files onto a device, optionally one slice per tensor (sharded loading)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from os import PathLike

import torch
from safetensors import safe_open

from mistralrs_torch._errors import ConfigError

__all__ = ["TensorSlice", "load_safetensors"]


@dataclass(frozen=True)
class TensorSlice:
    """Rows ``start:stop`` along dimension ``dim`` of one tensor."""

    dim: int
    start: int
    stop: int


def load_safetensors(path: str | PathLike[str], device: str = "cpu", *, names: Iterable[str] | None = None,
                     slices: Mapping[str, TensorSlice] | None = None,
                     dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file on ``device``, cast to ``dtype`` when given (floating-point tensors only: integer
    ones, such as quantized codes, keep theirs); a name in ``slices`` reads only that slice from disk."""
    slices = slices or {}
    with safe_open(str(path), framework="pt", device=device) as file:
        available = list(file.keys())
        wanted = list(names) if names is not None else available
        unused = [n for n in slices if n not in wanted] if names is not None else []
        if unused:
            raise ConfigError(f"{path}: a slice is given for {unused[0]!r}, which is not among the tensors to load: "
                              "add it to names, or drop its slice")
        missing = [n for n in [*wanted, *slices] if n not in available]
        if missing:
            raise ConfigError(f"{path} has no tensor {missing[0]!r}: it holds {', '.join(available[:8])}"
                              f"{' ...' if len(available) > 8 else ''}")
        tensors = {}
        for name in wanted:
            part = slices.get(name)
            if part is None:
                tensors[name] = file.get_tensor(name)
            else:
                view = file.get_slice(name)
                rank = len(view.get_shape())
                if not -rank <= part.dim < rank:
                    raise ConfigError(f"slice of {name!r} along dim {part.dim}: the tensor has {rank} dimensions")
                index = (slice(None),) * (part.dim % rank) + (slice(part.start, part.stop),)
                tensors[name] = view[index]
    if dtype is not None:
        tensors = {n: t.to(dtype) if t.is_floating_point() else t for n, t in tensors.items()}
    return tensors
