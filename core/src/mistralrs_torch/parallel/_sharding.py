"""Which part of each weight a rank holds: attention heads whole, other features evenly, quantization groups uncut.

Attention projections split by heads, never inside one: rank r of N holds
query heads [r*H/N, (r+1)*H/N). With at least as many key/value heads as
ranks, those split the same way; with fewer, each key/value head is
replicated on the ranks whose query heads use it (grouped-query attention
maps query head h to key/value head h // (H / KV)). Any other layout would
cut a head or leave a rank with query heads of two groups, and is refused
with the world sizes that would work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mistralrs_torch._errors import ConfigError
from mistralrs_torch.ops import QuantizedWeight
from mistralrs_torch.runtime._loading import TensorSlice

#: Projections whose rows (q/k/v) or input columns (o) are heads: an even split could cut one.
_ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def shard_range(size: int, rank: int, world_size: int, *, what: str = "dimension") -> tuple[int, int]:
    """The even share [start, stop) of ``size`` for ``rank``; ConfigError when ``world_size`` does not divide it."""
    if size % world_size:
        raise ConfigError(f"{what} has size {size}, which {world_size} ranks cannot split evenly: use a world size "
                          f"that divides {size}")
    per = size // world_size
    return rank * per, (rank + 1) * per


@dataclass(frozen=True)
class HeadShard:
    """One rank's heads: query heads [q_start, q_stop) and the key/value heads [kv_start, kv_stop) they use."""

    head_dim: int
    q_start: int
    q_stop: int
    kv_start: int
    kv_stop: int

    @property
    def heads(self) -> int:
        return self.q_stop - self.q_start

    @property
    def kv_heads(self) -> int:
        return self.kv_stop - self.kv_start

    @property
    def query_rows(self) -> tuple[int, int]:
        """The rows of q_proj (and columns of o_proj) this rank holds."""
        return self.q_start * self.head_dim, self.q_stop * self.head_dim

    @property
    def kv_rows(self) -> tuple[int, int]:
        """The rows of k_proj and v_proj this rank holds."""
        return self.kv_start * self.head_dim, self.kv_stop * self.head_dim


@dataclass(frozen=True)
class AttentionHeads:
    """An attention layer's layout: ``heads`` query heads and ``kv_heads`` key/value heads, ``head_dim`` rows each."""

    heads: int
    kv_heads: int
    head_dim: int

    def world_sizes(self) -> list[int]:
        """Every world size that splits these heads whole."""
        return [n for n in range(1, self.heads + 1) if self._fits(n)]

    def _fits(self, world: int) -> bool:
        return self.heads % world == 0 and (self.kv_heads % world == 0 or world % self.kv_heads == 0)

    def shard(self, rank: int, world_size: int, *, what: str = "attention") -> HeadShard:
        """Rank ``rank``'s heads; ConfigError naming ``what``, the head counts and the ranks if a head would be cut."""
        if self.heads % self.kv_heads:
            raise ConfigError(f"{what}: {self.heads} query heads do not form groups over {self.kv_heads} key/value "
                              "heads: the model's config is inconsistent; fix num_key_value_heads")
        if not self._fits(world_size):
            reason = (f"{self.heads} query heads do not divide by {world_size}" if self.heads % world_size else
                      f"{self.kv_heads} key/value heads neither divide by {world_size} nor divide {world_size}")
            raise ConfigError(
                f"{what} has {self.heads} attention heads and {self.kv_heads} key/value heads, which {world_size} "
                f"ranks cannot split without cutting a head ({reason}): use a world size that splits them whole "
                f"({', '.join(map(str, self.world_sizes()))}), or run in one process")
        per = self.heads // world_size
        q_start = rank * per
        if self.kv_heads >= world_size:
            kv_per = self.kv_heads // world_size
            return HeadShard(self.head_dim, q_start, q_start + per, rank * kv_per, (rank + 1) * kv_per)
        kv = q_start // (self.heads // self.kv_heads)  # replicated: the one key/value head this rank's group uses
        return HeadShard(self.head_dim, q_start, q_start + per, kv, kv + 1)


def column_slice(name: str, rows: int, rank: int, world_size: int, heads: AttentionHeads | None = None, *,
                 where: str = "") -> TensorSlice:
    """Rank ``rank``'s output rows of tensor ``name``: whole heads when ``heads`` says it is an attention projection
    (query rows or key/value rows, told apart by their count), else an even share. ``where`` follows the name in
    messages (" in FILE")."""
    tensor = f"{name!r}{where}"
    if heads is None:
        _refuse_headless(name, tensor, "rows", rows, world_size)
        return TensorSlice(0, *shard_range(rows, rank, world_size, what=f"dimension 0 of {tensor}"))
    shard = heads.shard(rank, world_size, what=f"tensor {tensor}")
    if rows == heads.heads * heads.head_dim:
        return TensorSlice(0, *shard.query_rows)
    if rows == heads.kv_heads * heads.head_dim:
        return TensorSlice(0, *shard.kv_rows)
    raise ConfigError(f"tensor {tensor} has {rows} rows, which are neither {heads.heads} query heads nor "
                      f"{heads.kv_heads} key/value heads of {heads.head_dim}: pass the AttentionHeads of its layer")


def row_slice(name: str, columns: int, rank: int, world_size: int, heads: AttentionHeads | None = None, *,
              where: str = "") -> TensorSlice:
    """Rank ``rank``'s input columns of tensor ``name``: its query heads' when ``heads`` is given (o_proj), else an
    even share."""
    tensor = f"{name!r}{where}"
    if heads is None:
        _refuse_headless(name, tensor, "input columns", columns, world_size)
        return TensorSlice(1, *shard_range(columns, rank, world_size, what=f"dimension 1 of {tensor}"))
    if columns != heads.heads * heads.head_dim:
        raise ConfigError(f"tensor {tensor} has {columns} input columns, not the {heads.heads} query heads of "
                          f"{heads.head_dim} its layer's output has: pass the AttentionHeads of its layer")
    return TensorSlice(1, *heads.shard(rank, world_size, what=f"tensor {tensor}").query_rows)


def _refuse_headless(name: str, tensor: str, what: str, size: int, world_size: int) -> None:
    """ConfigError for an attention projection split without its heads (an even split ignores head boundaries)."""
    projection = next((p for p in name.split(".") if p in _ATTENTION_PROJECTIONS), None)
    if projection is not None:
        raise ConfigError(
            f"tensor {tensor} is an attention projection ({projection}), but no heads were given: splitting its "
            f"{size} {what} evenly over {world_size} ranks ignores head boundaries and can cut a head; pass "
            "heads=AttentionHeads(num_attention_heads, num_key_value_heads, head_dim) of its layer")


def slice_weight(weight: torch.Tensor | QuantizedWeight, part: TensorSlice, name: str,
                 ) -> torch.Tensor | QuantizedWeight:
    """``part`` of a decoded weight; a quantized one keeps whole groups (ConfigError when ``part`` would cut one)."""
    if isinstance(weight, torch.Tensor):
        return _own(weight.narrow(part.dim, part.start, part.stop - part.start))
    codes, scales, offsets = weight.codes, weight.scales, weight.offsets
    if part.dim == 0:
        rows = slice(part.start, part.stop)
        return QuantizedWeight(_own(codes[rows]), _own(scales[rows]), None if offsets is None else _own(offsets[rows]),
                               weight.bits, weight.group_size)
    group, columns = weight.group_size, weight.shape[1]
    if part.start % group or part.stop % group:
        ranks = columns // max(1, part.stop - part.start)
        raise ConfigError(
            f"tensor {name!r} is quantized in groups of {group} input columns; splitting its {columns} columns over "
            f"{ranks} ranks gives columns {part.start}:{part.stop}, which cuts a group: use a world size whose "
            f"share of {columns} columns is a multiple of {group}")
    cols, groups = slice(part.start, part.stop), slice(part.start // group, part.stop // group)
    return QuantizedWeight(_own(codes[:, cols]), _own(scales[:, groups]),
                           None if offsets is None else _own(offsets[:, groups]), weight.bits, weight.group_size)


def _own(view: torch.Tensor) -> torch.Tensor:
    """A contiguous copy, so that the whole decoded tensor behind the view can be freed."""
    return view.clone(memory_format=torch.contiguous_format)
