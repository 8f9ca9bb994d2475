"""A Llama-family model split over the ranks of a communicator (tensor parallelism).

q/k/v and gate/up are column-parallel: each rank holds whole attention heads
(key/value heads replicated when there are fewer than ranks) and an even share
of the MLP rows. o and down are row-parallel: each rank holds the matching
input columns, and one all_reduce after each sums the partial products, so
every rank leaves a layer with the same hidden state. Embeddings, norms and
lm_head are replicated (lm_head is one matmul per token; splitting it would
add an all_gather per step for little gain at these sizes). A rank reads only
its slices of the sharded weights; quantized ones are cut along whole rows and
whole quantization groups.
"""

from __future__ import annotations

import torch

from mistralrs_torch.models._config import ModelConfig
from mistralrs_torch.models._layers import Linear, Weight
from mistralrs_torch.ops import Communicator
from mistralrs_torch.parallel._sharding import AttentionHeads, HeadShard, column_slice, row_slice, shard_range
from mistralrs_torch.runtime import Runtime
from mistralrs_torch.runtime._loading import TensorSlice


class ModelShards:
    """What this rank holds of a model: its heads, and the slice of each weight (None: the whole tensor).

    Made before any weight is read, so that a model the ranks cannot split fails at once, naming the head counts.
    """

    def __init__(self, config: ModelConfig, communicator: Communicator, name: str | None = None) -> None:
        """``name`` (the checkpoint's path) is shown in errors."""
        self.config, self.communicator = config, communicator
        self.rank, self.world_size = communicator.rank, communicator.world_size
        c = config
        self.layout = AttentionHeads(c.num_heads, c.num_kv_heads, c.head_dim)
        model = f"the {c.architecture} model" + (f" {name}" if name else "")
        self.heads: HeadShard = self.layout.shard(self.rank, self.world_size, what=model)
        shard_range(c.intermediate_size, self.rank, self.world_size,
                    what=f"intermediate_size (dimension 0 of 'mlp.gate_proj.weight') of {model}")

    def part(self, name: str) -> TensorSlice | None:
        """The slice of tensor ``name`` (a Hugging Face name) this rank reads; None for a replicated tensor."""
        if self.world_size == 1:
            return None
        c = self.config
        stem, kind = name.rsplit(".", 1)  # model.layers.0.self_attn.q_proj, weight
        projection = stem.rsplit(".", 1)[-1]
        if projection in ("q_proj", "k_proj", "v_proj"):
            heads = c.num_heads if projection == "q_proj" else c.num_kv_heads
            return column_slice(name, heads * c.head_dim, self.rank, self.world_size, self.layout)
        if projection in ("gate_proj", "up_proj"):
            return column_slice(name, c.intermediate_size, self.rank, self.world_size)
        if projection == "o_proj" and kind == "weight":
            return row_slice(name, c.num_heads * c.head_dim, self.rank, self.world_size, self.layout)
        if projection == "down_proj" and kind == "weight":
            return row_slice(name, c.intermediate_size, self.rank, self.world_size)
        return None  # embeddings, norms, lm_head, and o/down biases (added once, after the all_reduce)


class ReducedLinear(Linear):
    """A row-parallel linear: this rank's partial product, summed over the ranks by all_reduce, then the bias."""

    def __init__(self, runtime: Runtime, weight: Weight, bias: torch.Tensor | None, dtype: torch.dtype,
                 communicator: Communicator) -> None:
        super().__init__(runtime, weight, None, dtype)
        self.reduced_bias = None if bias is None else runtime.to_device(bias).to(dtype)
        self.communicator = communicator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        total = self.communicator.all_reduce(super().__call__(x).contiguous(), "sum")
        return total if self.reduced_bias is None else total + self.reduced_bias
