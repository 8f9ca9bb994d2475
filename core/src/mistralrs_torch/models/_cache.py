"""The paged KV cache shared by every sequence: per-layer key/value blocks, a block allocator and block tables.

Every layer has key and value caches of shape (blocks, block size, kv heads,
head size), the layout the paged_attention and write_kv_cache ops take. A
block id names the same block in every layer, so one allocation serves the
whole model. Each sequence owns a row of the block table, filled as it grows
and returned to the free list when it is closed.

A layer with a sliding window of W tokens keeps a ring of W slots at the
start of its sequence's blocks (position p in slot p mod W): decode then
attends over exactly the last W keys, whose order does not matter once RoPE
is applied. A model whose every layer slides therefore never needs more than
ceil(W / block size) blocks per sequence, however long it runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mistralrs_torch._errors import ConfigError, KVCacheFullError

DEFAULT_BLOCK_SIZE = 16
#: The default budget: at most this many GiB of keys and values (fewer when the sequences it is sized for fit).
DEFAULT_MEMORY_GIB = 1.0
_FIX = ("give the cache more blocks (--kv-cache-blocks N or --kv-cache-memory GiB; in Python "
        "Engine(model, kv_cache_blocks=N) or model.set_kv_cache(blocks=N)), or run fewer sequences at once")


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r} is not valid: give a whole number >= 1")
    return value


def cache_blocks(*, block_bytes: int, blocks: int | None, memory_gib: float | None, default_blocks: int) -> int:
    """The number of blocks from ``blocks``, or from a budget of ``memory_gib`` GiB, or ``default_blocks``
    capped by the default budget; ``block_bytes`` is what one block holds over all layers, keys and values."""
    if blocks is not None and memory_gib is not None:
        raise ConfigError(f"kv cache blocks={blocks} and memory={memory_gib} GiB were both given: give one "
                          "(--kv-cache-blocks or --kv-cache-memory)")
    if blocks is not None:
        return _positive_int("kv cache blocks (--kv-cache-blocks)", blocks)
    if memory_gib is not None:
        if isinstance(memory_gib, bool) or not isinstance(memory_gib, (int, float)) or not memory_gib > 0 \
                or not math.isfinite(memory_gib):
            raise ConfigError(f"kv cache memory (--kv-cache-memory) {memory_gib!r} GiB is not valid: give a "
                              "number of GiB > 0, e.g. 0.5")
        count = int(memory_gib * 2**30) // block_bytes
        if count < 1:
            raise ConfigError(f"kv cache memory (--kv-cache-memory) {memory_gib} GiB holds no block: one block "
                              f"takes {block_bytes} bytes over all layers; give at least {block_bytes / 2**30:.3g} GiB")
        return count
    return max(1, min(default_blocks, int(DEFAULT_MEMORY_GIB * 2**30) // block_bytes))


class KVCache:
    """Paged keys and values for many sequences: ``open`` a sequence, ``reserve`` room as it grows, ``close`` it.

    ``windows`` holds one entry per layer (None: the layer attends over the whole sequence; W: a sliding window
    of W tokens); ``context`` is the longest sequence the model runs.
    """

    def __init__(self, *, windows: Sequence[int | None], kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str, blocks: int, block_size: int = DEFAULT_BLOCK_SIZE,
                 context: int) -> None:
        self.block_size = _positive_int("kv cache block size", block_size)
        self.total_blocks = _positive_int("kv cache blocks", blocks)
        self.windows = tuple(windows)
        self.context = context
        # The longest run of positions any layer keeps: a sequence needs blocks for that many tokens at most.
        self.span = context if None in self.windows else min(context, max(w for w in self.windows if w))
        self.device = torch.device(device)
        shape = (blocks, block_size, kv_heads, head_dim)
        # Slots past a sequence's length may hold anything (the ops' contract), so nothing is zeroed: on the CPU
        # the pages of blocks never used are never touched.
        self.keys = [torch.empty(shape, dtype=dtype, device=self.device) for _ in self.windows]
        self.values = [torch.empty(shape, dtype=dtype, device=self.device) for _ in self.windows]
        self.max_blocks = min(self.blocks_needed(context), blocks)
        self.table = torch.zeros((8, self.max_blocks), dtype=torch.int32)  # rows of block ids, on the CPU
        self._free = list(range(blocks - 1, -1, -1))  # a stack: the blocks freed last are reused first
        self._free_rows = list(range(7, -1, -1))
        self._allocated: dict[int, int] = {}  # row -> blocks it holds
        self._lengths: dict[int, int] = {}  # row -> tokens written

    @staticmethod
    def block_bytes(*, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                    block_size: int = DEFAULT_BLOCK_SIZE) -> int:
        """Bytes of one block over all layers, keys and values."""
        return 2 * layers * block_size * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    # -- sizes -------------------------------------------------------------------------------------------

    def blocks_needed(self, length: int) -> int:
        """Blocks a sequence of ``length`` tokens holds."""
        return -(-min(length, self.span) // self.block_size)

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    @property
    def used_blocks(self) -> int:
        return self.total_blocks - len(self._free)

    @property
    def sequences(self) -> tuple[int, ...]:
        """The open sequences."""
        return tuple(self._allocated)

    def allocated(self, sequence: int) -> int:
        return self._allocated[sequence]

    def length(self, sequence: int) -> int:
        """Tokens of ``sequence`` written to the cache so far."""
        return self._lengths[sequence]

    def growth(self, sequence: int, length: int) -> int:
        """New blocks ``sequence`` needs to hold ``length`` tokens."""
        return max(0, self.blocks_needed(length) - self._allocated[sequence])

    def full_error(self, needed: int, what: str) -> KVCacheFullError:
        return KVCacheFullError(
            f"the KV cache is out of blocks: {what} needs {needed} block(s) of {self.block_size} tokens, "
            f"{self.free_blocks} of {self.total_blocks} are free: {_FIX}", needed=needed, free=self.free_blocks,
            total=self.total_blocks)

    # -- sequences --------------------------------------------------------------------------------------

    def open(self) -> int:
        """A new, empty sequence; its handle is its row of the block table."""
        if not self._free_rows:
            grown = torch.zeros((2 * self.table.shape[0], self.max_blocks), dtype=torch.int32)
            grown[:self.table.shape[0]] = self.table
            self._free_rows = list(range(grown.shape[0] - 1, self.table.shape[0] - 1, -1))
            self.table = grown
        row = self._free_rows.pop()
        self._allocated[row], self._lengths[row] = 0, 0
        return row

    def reserve(self, sequence: int, length: int) -> None:
        """Make room for ``sequence`` to hold ``length`` tokens; KVCacheFullError (allocating nothing) if the
        free blocks do not suffice, or if the sequence is longer than the model's context."""
        if length > self.context:
            raise ConfigError(f"a sequence of {length} tokens is longer than the model's context of {self.context} "
                              "tokens (max_position_embeddings): shorten the prompt or max_tokens")
        new = self.growth(sequence, length)
        if new > len(self._free):
            raise self.full_error(new, f"a sequence growing to {length} tokens")
        if new:
            held = self._allocated[sequence]
            taken = self._free[-new:]
            del self._free[-new:]
            self.table[sequence, held:held + new] = torch.tensor(taken[::-1], dtype=torch.int32)
            self._allocated[sequence] = held + new

    def advance(self, sequence: int, tokens: int) -> int:
        """Record ``tokens`` new tokens written for ``sequence`` (room reserved first); returns the old length."""
        start = self._lengths[sequence]
        if self.blocks_needed(start + tokens) > self._allocated[sequence]:
            raise ConfigError(f"sequence {sequence} grows to {start + tokens} tokens without room reserved: call "
                              "reserve() first")
        self._lengths[sequence] = start + tokens
        return start

    def close(self, sequence: int) -> None:
        """Free every block of ``sequence``; its handle may be reused."""
        held = self._allocated.pop(sequence)
        del self._lengths[sequence]
        self._free.extend(self.table[sequence, :held].tolist()[::-1])
        self._free_rows.append(sequence)
