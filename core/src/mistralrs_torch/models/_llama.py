"""The Llama family in one class: Llama 2/3, Mistral (sliding window), Qwen2 (q/k/v bias), SmolLM, tied embeddings.

The differences between them are configuration (ModelConfig), not code: the
biases present, each layer's window, the RoPE scaling, whether lm_head is the
embedding. Weights arrive under Hugging Face names from either loader.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from mistralrs_torch.models._config import ModelConfig
from mistralrs_torch.models._layers import Attention, Embedding, KVCache, Linear, RMSNorm, Weight
from mistralrs_torch.ops import rope_inv_freq
from mistralrs_torch.runtime import Runtime

__all__ = ["LlamaForCausalLM"]

class _MLP:
    def __init__(self, gate: Linear, up: Linear, down: Linear) -> None:
        self.gate, self.up, self.down = gate, up, down

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class _DecoderLayer:
    def __init__(self, attention: Attention, mlp: _MLP, input_norm: RMSNorm, post_attention_norm: RMSNorm) -> None:
        self.attention, self.mlp = attention, mlp
        self.input_norm, self.post_attention_norm = input_norm, post_attention_norm

    def __call__(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        x = x + self.attention(self.input_norm(x), positions, cache)
        return x + self.mlp(self.post_attention_norm(x))


class LlamaForCausalLM:
    """Token ids in, next-token logits out, one sequence at a time over its paged KV cache."""

    def __init__(self, config: ModelConfig, runtime: Runtime, weight: Callable[[str], Weight],
                 dtype: torch.dtype) -> None:
        self.config, self.runtime, self.dtype = config, runtime, dtype
        c = config

        def linear(prefix: str, bias: bool) -> Linear:
            b = weight(f"{prefix}.bias") if bias else None
            assert b is None or isinstance(b, torch.Tensor)
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
                                  linear(f"{p}.self_attn.o_proj", c.o_bias), c.num_heads, c.num_kv_heads, c.head_dim,
                                  inv_freq, c.sliding_windows[i])
            mlp = _MLP(linear(f"{p}.mlp.gate_proj", c.mlp_bias), linear(f"{p}.mlp.up_proj", c.mlp_bias),
                       linear(f"{p}.mlp.down_proj", c.mlp_bias))
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

    def new_cache(self, capacity: int) -> KVCache:
        """An empty cache for a sequence of up to ``capacity`` tokens."""
        c = self.config
        return KVCache(self.runtime, c.sliding_windows, capacity, c.num_kv_heads, c.head_dim, self.dtype)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, cache: KVCache, *, all_logits: bool = False) -> torch.Tensor:
        """Logits (float32) of the last token (vocab,), or of every token (tokens, vocab), after feeding ``ids``.

        The first call on an empty cache is the prompt (prefill); later calls feed one token each (decode).
        """
        tokens = ids.shape[0]
        positions = torch.arange(cache.length, cache.length + tokens, device=ids.device)[None]
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x, positions, cache)
        cache.length += tokens
        x = self.norm(x if all_logits else x[-1:])
        logits = self.lm_head(x).float()
        return logits if all_logits else logits[0]
