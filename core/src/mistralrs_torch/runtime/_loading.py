"""Loading safetensors files onto a device, optionally one slice per tensor (sharded loading).

Every failure names the file, and the tensor when one is at fault: the safetensors
library's own errors ("header too small") say neither. A slice must lie inside its
tensor: safetensors would silently clip ``5:99`` of a 10-row tensor to 5 rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from os import PathLike

import torch
from safetensors import SafetensorError, safe_open

from mistralrs_torch._errors import ConfigError
from mistralrs_torch.validation import shown

_FIX = "re-download or re-export the file (a complete safetensors file, e.g. written by safetensors.torch.save_file)"


@dataclass(frozen=True)
class TensorSlice:
    """Rows ``start:stop`` along dimension ``dim`` of one tensor."""

    dim: int
    start: int
    stop: int


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def _index(path: str, name: str, part: TensorSlice, shape: list[int]) -> tuple[slice, ...]:
    """The indexing tuple of ``part``; ConfigError naming file and tensor unless it lies inside ``shape``."""
    rank = len(shape)
    where = f"{path}: slice {part.start}:{part.stop} of tensor {shown(name)} along dim {part.dim}"
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (part.dim, part.start, part.stop)):
        raise ConfigError(f"{where}: dim, start and stop must be integers")
    if not -rank <= part.dim < rank:
        raise ConfigError(f"{where}: the tensor has {rank} dimension{'s' if rank != 1 else ''} (shape {shape})")
    size = shape[part.dim % rank]
    if not 0 <= part.start <= part.stop <= size:
        raise ConfigError(f"{where}: outside its {size} entries (shape {shape}): give 0 <= start <= stop <= {size}")
    return (slice(None),) * (part.dim % rank) + (slice(part.start, part.stop),)


def load_safetensors(path: str | PathLike[str], device: str = "cpu", *, names: Iterable[str] | None = None,
                     slices: Mapping[str, TensorSlice] | None = None,
                     dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file on ``device``, cast to ``dtype`` when given (floating-point tensors only: integer
    ones, such as quantized codes, keep theirs); a name in ``slices`` reads only that slice from disk.

    ConfigError, naming the file (and the tensor), for a file that is missing, unreadable or corrupt, a
    tensor it does not hold, and a slice outside its tensor.
    """
    slices = slices or {}
    path = str(path)
    try:
        file_context = safe_open(path, framework="pt", device=device)
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist: check the model folder, or download the weights again") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{path} is not a readable safetensors file ({_first_line(exc)}): {_FIX}") from None
    with file_context as file:
        available = list(file.keys())
        wanted = list(names) if names is not None else available
        unused = [n for n in slices if n not in wanted] if names is not None else []
        if unused:
            raise ConfigError(f"{path}: a slice is given for {shown(unused[0])}, which is not among the tensors to "
                              "load: add it to names, or drop its slice")
        missing = [n for n in [*wanted, *slices] if n not in available]
        if missing:
            raise ConfigError(f"{path} has no tensor {shown(missing[0])}: it holds {', '.join(available[:8])}"
                              f"{' ...' if len(available) > 8 else ''}")
        tensors = {}
        for name in wanted:
            part = slices.get(name)
            try:
                if part is None:
                    tensors[name] = file.get_tensor(name)
                else:
                    view = file.get_slice(name)
                    tensors[name] = view[_index(path, name, part, list(view.get_shape()))]
            except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
                raise ConfigError(f"{path}: tensor {shown(name)} cannot be read ({_first_line(exc)}): {_FIX}") \
                    from None
    if dtype is not None:
        tensors = {n: t.to(dtype) if t.is_floating_point() else t for n, t in tensors.items()}
    return tensors
