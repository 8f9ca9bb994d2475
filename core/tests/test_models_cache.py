"""The KV cache manager: a block allocator shared by many sequences, checked by a hypothesis state machine.

The machine opens, grows and closes sequences at random in a small cache and
keeps its own account of how many blocks each sequence must hold. After
every step: the blocks of open sequences are distinct, together with the
free ones they are every block exactly once, and the tokens each sequence
wrote (its own number, slot by slot through its block table) are still
there, so no sequence ever writes over another's blocks.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from mistralrs_torch import ConfigError, KVCacheFullError
from mistralrs_torch.models import KVCache
from mistralrs_torch.models._cache import cache_blocks

BLOCKS, SIZE, CONTEXT = 12, 4, 40


def _cache(windows: tuple[int | None, ...] = (None,), blocks: int = BLOCKS) -> KVCache:
    return KVCache(windows=windows, kv_heads=1, head_dim=2, dtype=torch.float32, device="cpu", blocks=blocks,
                   block_size=SIZE, context=CONTEXT)


class Allocator(RuleBasedStateMachine):
    sequences = Bundle("sequences")

    def __init__(self) -> None:
        super().__init__()
        self.cache = _cache()
        self.lengths: dict[int, int] = {}

    @rule(target=sequences)
    def open(self) -> int:
        sequence = self.cache.open()
        assert sequence not in self.lengths
        self.lengths[sequence] = 0
        return sequence

    @rule(sequence=sequences, tokens=st.integers(1, 14))
    def grow(self, sequence: int, tokens: int) -> None:
        if sequence not in self.lengths:
            return
        start = self.lengths[sequence]
        end = min(start + tokens, CONTEXT)
        need = -(-end // SIZE) - -(-start // SIZE)
        if need > self.cache.free_blocks:
            free = self.cache.free_blocks
            with pytest.raises(KVCacheFullError) as error:
                self.cache.reserve(sequence, end)
            assert (error.value.needed, error.value.free, error.value.total) == (need, free, BLOCKS)
            assert self.cache.free_blocks == free  # nothing taken
            return
        self.cache.reserve(sequence, end)
        assert self.cache.advance(sequence, end - start) == start
        self.lengths[sequence] = end
        # This sequence writes its own number into its new slots, through its block table.
        positions = torch.arange(start, end)
        slots = self.cache.table[sequence, positions // SIZE].long() * SIZE + positions % SIZE
        self.cache.keys[0].view(-1, 1, 2)[slots] = float(sequence)

    @rule(sequence=consumes(sequences))
    def close(self, sequence: int) -> None:
        if sequence in self.lengths:
            self.cache.close(sequence)
            del self.lengths[sequence]

    @invariant()
    def blocks_are_owned_once(self) -> None:
        held = [b for s in self.lengths for b in self.cache.table[s, :self.cache.allocated(s)].tolist()]
        assert len(held) == len(set(held))
        assert sorted(held + self.cache._free) == list(range(BLOCKS))
        assert self.cache.used_blocks == len(held) == sum(-(-n // SIZE) for n in self.lengths.values())

    @invariant()
    def written_tokens_survive(self) -> None:
        for sequence, length in self.lengths.items():
            positions = torch.arange(length)
            slots = self.cache.table[sequence, positions // SIZE].long() * SIZE + positions % SIZE
            assert bool((self.cache.keys[0].view(-1, 1, 2)[slots] == float(sequence)).all())


Allocator.TestCase.settings = settings(max_examples=50, stateful_step_count=30, deadline=None)
test_allocator_shares_blocks_without_overlap = Allocator.TestCase


def test_closing_every_sequence_frees_every_block() -> None:
    cache = _cache()
    sequences = [cache.open() for _ in range(3)]
    for s, length in zip(sequences, (5, 9, 13), strict=True):
        cache.reserve(s, length)
    assert cache.used_blocks == 2 + 3 + 4
    for s in sequences:
        cache.close(s)
    assert (cache.used_blocks, cache.free_blocks, cache.sequences) == (0, BLOCKS, ())


def test_the_out_of_blocks_error_names_the_blocks_and_the_fix() -> None:
    cache = _cache(blocks=3)
    cache.reserve(cache.open(), 9)
    with pytest.raises(KVCacheFullError, match=r"the KV cache is out of blocks: a sequence growing to 8 tokens needs "
                                               r"2 block\(s\) of 4 tokens, 0 of 3 are free: give the cache more blocks "
                                               r"\(--kv-cache-blocks N or --kv-cache-memory GiB.*or run fewer "
                                               r"sequences at once"):
        cache.reserve(cache.open(), 8)


def test_sliding_window_layers_bound_a_sequences_blocks() -> None:
    windowed = _cache(windows=(6, 6))
    assert [windowed.blocks_needed(n) for n in (1, 4, 5, 6, 7, 40)] == [1, 1, 2, 2, 2, 2]  # a ring of 6 slots
    mixed = _cache(windows=(6, None))  # a full layer needs every token's block; the window uses the first ones
    assert [mixed.blocks_needed(n) for n in (6, 7, 40)] == [2, 2, 10]


def test_the_block_table_grows_past_its_first_rows() -> None:
    cache = _cache(blocks=40)
    sequences = [cache.open() for _ in range(20)]
    for s in sequences:
        cache.reserve(s, 6)
    assert cache.table.shape[0] >= 20 and cache.used_blocks == 40
    held = {b for s in sequences for b in cache.table[s, :2].tolist()}
    assert held == set(range(40))


def test_cache_sizing_from_blocks_memory_or_the_default() -> None:
    block = KVCache.block_bytes(layers=2, kv_heads=2, head_dim=16, dtype=torch.float32, block_size=16)
    assert block == 2 * 2 * 16 * 2 * 16 * 4
    assert cache_blocks(block_bytes=block, blocks=7, memory_gib=None, default_blocks=100) == 7
    assert cache_blocks(block_bytes=block, blocks=None, memory_gib=0.5, default_blocks=100) == 2**29 // block
    assert cache_blocks(block_bytes=block, blocks=None, memory_gib=None, default_blocks=100) == 100
    assert cache_blocks(block_bytes=2**29, blocks=None, memory_gib=None, default_blocks=100) == 2  # 1 GiB at most
    with pytest.raises(ConfigError, match=r"holds no block: one block takes 8192 bytes"):
        cache_blocks(block_bytes=block, blocks=None, memory_gib=1e-6, default_blocks=1)
    with pytest.raises(ConfigError, match="were both given: give one"):
        cache_blocks(block_bytes=block, blocks=1, memory_gib=1.0, default_blocks=1)
    with pytest.raises(ConfigError, match=r"kv cache blocks \(--kv-cache-blocks\)=0 is not valid"):
        cache_blocks(block_bytes=block, blocks=0, memory_gib=None, default_blocks=1)
