"""The Llama family in one class: Llama 2/3, Mistral (sliding window), Qwen2 (q/k/v bias), SmolLM, tied embeddings.

The differences between them are configuration (ModelConfig), not code: the
biases present, each layer's window, the RoPE scaling, whether lm_head is the
embedding. Weights arrive under Hugging Face names from either loader. Over
several ranks each holds its share of the heads and MLP rows (ModelShards)
and o/down end in an all_reduce; every rank then runs the same forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from mistralrs_torch.generic import SingleProcessCommunicator
from mistralrs_torch.models._batch import StepInputs
from mistralrs_torch.models._cache import KVCache
from mistralrs_torch.models._config import ModelConfig
from mistralrs_torch.models._layers import Attention, Embedding, Linear, RMSNorm, Weight
from mistralrs_torch.models._tensor_parallel import ModelShards, ReducedLinear
from mistralrs_torch.ops import Communicator, rope_inv_freq
from mistralrs_torch.runtime import Runtime
from mistralrs_torch.runtime._loading import TensorSlice


class _MLP:
    def __init__(self, gate: Linear, up: Linear, down: Linear) -> None:
        self.gate, self.up, self.down = gate, up, down

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class _DecoderLayer:
    def __init__(self, attention: Attention, mlp: _MLP, input_norm: RMSNorm, post_attention_norm: RMSNorm) -> None:
        self.attention, self.mlp = attention, mlp
        self.input_norm, self.post_attention_norm = input_norm, post_attention_norm

    def __call__(self, x: torch.Tensor, step: StepInputs) -> torch.Tensor:
        x = x + self.attention(self.input_norm(x), step)
        return x + self.mlp(self.post_attention_norm(x))


class LlamaForCausalLM:
    """Token ids in, next-token logits out, for many sequences at once over the shared paged KV cache.

    ``read(name, part)`` reads tensor ``name``, only ``part`` of it when that is not None. With a
    ``communicator`` of several ranks this rank builds its share of the model; every rank must then make the
    same forward calls in the same order (the all_reduce calls pair up across ranks). ``name`` (the
    checkpoint's path) is shown in errors.
    """

    def __init__(self, config: ModelConfig, runtime: Runtime, read: Callable[[str, TensorSlice | None], Weight],
                 dtype: torch.dtype, communicator: Communicator | None = None, name: str | None = None) -> None:
        self.config, self.runtime, self.dtype = config, runtime, dtype
        self.communicator = communicator if communicator is not None else SingleProcessCommunicator()
        shards = ModelShards(config, self.communicator, name)  # refuses a split that cuts a head, before any read
        self.heads, self.kv_heads = shards.heads.heads, shards.heads.kv_heads  # this rank's
        c = config

        def weight(name: str) -> Weight:
            return read(name, shards.part(name))

        def linear(prefix: str, bias: bool, reduce: bool = False) -> Linear:
            b = weight(f"{prefix}.bias") if bias else None
            assert b is None or isinstance(b, torch.Tensor)
            if reduce and shards.world_size > 1:
                return ReducedLinear(runtime, weight(f"{prefix}.weight"), b, dtype, self.communicator)
            return Linear(runtime, weight(f"{prefix}.weight"), b, dtype)

        def norm(name: str) -> RMSNorm:
            w = weight(name)
            assert isinstance(w, torch.Tensor)
            return RMSNorm(runtime, w, c.rms_norm_eps, dtype)

        inv_freq = runtime.to_device(rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling))
        embed = weight("model.embed_tokens.weight")
        self.embed = Embedding(runtime, embed, dtype)
        self.layers = []
        for i in range(c.num_layers):
            p = f"model.layers.{i}"
            attention = Attention(runtime, i, linear(f"{p}.self_attn.q_proj", c.qkv_bias),
                                  linear(f"{p}.self_attn.k_proj", c.qkv_bias),
                                  linear(f"{p}.self_attn.v_proj", c.qkv_bias),
                                  linear(f"{p}.self_attn.o_proj", c.o_bias, reduce=True), self.heads, self.kv_heads,
                                  c.head_dim, inv_freq, c.sliding_windows[i])
            mlp = _MLP(linear(f"{p}.mlp.gate_proj", c.mlp_bias), linear(f"{p}.mlp.up_proj", c.mlp_bias),
                       linear(f"{p}.mlp.down_proj", c.mlp_bias, reduce=True))
            self.layers.append(_DecoderLayer(attention, mlp, norm(f"{p}.input_layernorm.weight"),
                                             norm(f"{p}.post_attention_layernorm.weight")))
        self.norm = norm("model.norm.weight")
        # Tied: the embedding doubles as lm_head (transformers ties whenever the config says so).
        self.lm_head = Linear(runtime, embed if c.tie_word_embeddings else weight("lm_head.weight"), None, dtype)

    @staticmethod
    def weight_names(config: ModelConfig) -> list[str]:
        """Every tensor the model reads, under Hugging Face names, in the order it reads them."""
        def linear(prefix: str, bias: bool) -> list[str]:
            return [f"{prefix}.weight", *([f"{prefix}.bias"] if bias else [])]

        c, names = config, ["model.embed_tokens.weight"]
        for i in range(c.num_layers):
            p = f"model.layers.{i}"
            names += [*linear(f"{p}.self_attn.q_proj", c.qkv_bias), *linear(f"{p}.self_attn.k_proj", c.qkv_bias),
                      *linear(f"{p}.self_attn.v_proj", c.qkv_bias), *linear(f"{p}.self_attn.o_proj", c.o_bias),
                      *linear(f"{p}.mlp.gate_proj", c.mlp_bias), *linear(f"{p}.mlp.up_proj", c.mlp_bias),
                      *linear(f"{p}.mlp.down_proj", c.mlp_bias), f"{p}.input_layernorm.weight",
                      f"{p}.post_attention_layernorm.weight"]
        return [*names, "model.norm.weight", *([] if c.tie_word_embeddings else ["lm_head.weight"])]

    def new_cache(self, blocks: int, block_size: int) -> KVCache:
        """An empty cache of ``blocks`` blocks of ``block_size`` tokens, shared by the sequences opened in it."""
        c = self.config
        return KVCache(windows=c.sliding_windows, kv_heads=self.kv_heads, head_dim=c.head_dim, dtype=self.dtype,
                       device=self.runtime.device.torch_device, blocks=blocks, block_size=block_size,
                       context=c.max_position_embeddings)

    def cache_block_bytes(self, block_size: int) -> int:
        """Bytes one cache block takes over all layers, keys and values."""
        c = self.config
        return KVCache.block_bytes(layers=c.num_layers, kv_heads=self.kv_heads, head_dim=c.head_dim,
                                   dtype=self.dtype, block_size=block_size)

    @torch.no_grad()
    def forward(self, step: StepInputs) -> torch.Tensor:
        """float32 logits (outputs, vocab) of the tokens ``step.outputs`` names (every token when it is None)."""
        x = self.embed(step.ids)
        for layer in self.layers:
            x = layer(x, step)
        if step.outputs is not None:
            x = x[step.outputs]
        return self.lm_head(self.norm(x)).float()
