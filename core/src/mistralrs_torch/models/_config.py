"""The hyperparameters of a Llama-family model, read from a Hugging Face config.json or GGUF metadata.

Both sources land in one frozen :class:`ModelConfig`, so the model code never
knows where its numbers came from. Every field a model cannot run without is
checked here, and a bad or missing one is a :class:`ModelLoadError` naming the
file and the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mistralrs_torch._errors import ModelLoadError
from mistralrs_torch.ops import ROPE_TYPES

#: Hugging Face model_type / GGUF general.architecture values this runner implements (one Llama-family class).
ARCHITECTURES = ("llama", "mistral", "qwen2")


@dataclass(frozen=True)
class ModelConfig:
    """What the Llama-family model needs; ``sliding_windows`` holds one entry per layer (None: full attention)."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: Mapping[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    sliding_windows: tuple[int | None, ...]


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} cannot be read as JSON ({exc}): the file is damaged or truncated; get it "
                             "again") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} holds a JSON {type(data).__name__}, not an object: get the file again")
    return data


def _field(config: Mapping[str, Any], key: str, source: str, kind: type = int) -> Any:
    value = config.get(key)
    if value is None:
        raise ModelLoadError(f"{source} has no {key!r}, which the model needs: the file is incomplete; "
                             "get the complete checkpoint again")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ModelLoadError(f"{source}: {key}={value!r} is not a positive whole number: fix or replace the file")
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ModelLoadError(f"{source}: {key}={value!r} is not a number: fix or replace the file")
    return kind(value)


def _rope_scaling(scaling: Mapping[str, Any] | None, source: str, field: str) -> Mapping[str, Any] | None:
    """None for plain RoPE, else the scaling dict with its type under "rope_type"; other types are refused."""
    if not scaling:
        return None
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ModelLoadError(f"{source}: {field} rope_type {kind!r} is not supported (supported: "
                             f"{', '.join(ROPE_TYPES)}): use a checkpoint with one of those")
    if kind == "default":
        return None
    needed = ("factor",) if kind == "linear" else (
        "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    missing = [k for k in needed if not isinstance(scaling.get(k), (int, float))]
    if missing:
        raise ModelLoadError(f"{source}: {field} of type {kind!r} has no numeric {missing[0]!r}: fix or replace "
                             "the file")
    return {"rope_type": kind, **{k: scaling[k] for k in needed}}


def _architecture(value: Any, source: str, field: str) -> str:
    if value not in ARCHITECTURES:
        raise ModelLoadError(f"{source}: {field} {value!r} is not a supported architecture (supported: "
                             f"{', '.join(ARCHITECTURES)}, the Llama family): use a model of one of those")
    return str(value)


def config_from_hf(config: Mapping[str, Any], source: str) -> ModelConfig:
    """A Hugging Face config.json (transformers 4 or 5 spelling of the rope fields)."""
    architecture = _architecture(config.get("model_type"), source, "model_type")
    if config.get("hidden_act", "silu") != "silu":
        raise ModelLoadError(f"{source}: hidden_act {config['hidden_act']!r} is not supported (supported: silu)")
    heads = _field(config, "num_attention_heads", source)
    hidden = _field(config, "hidden_size", source)
    layers = _field(config, "num_hidden_layers", source)
    # transformers 5 writes rope_parameters (theta inside); transformers 4 rope_theta and rope_scaling.
    parameters = config.get("rope_parameters") or {}
    theta = parameters.get("rope_theta", config.get("rope_theta", 10000.0))
    if "rope_parameters" in config:
        scaling = _rope_scaling(parameters, source, "rope_parameters")
    else:
        scaling = _rope_scaling(config.get("rope_scaling"), source, "rope_scaling")
    if architecture == "qwen2":
        # Qwen2 slides only with use_sliding_window, and then only from layer max_window_layers on.
        window = config.get("sliding_window") if config.get("use_sliding_window") else None
        default_types = ["sliding_attention" if window is not None and i >= config.get("max_window_layers", 28)
                         else "full_attention" for i in range(layers)]
    else:
        window = config.get("sliding_window", 4096 if architecture == "mistral" else None)
        default_types = ["sliding_attention" if window is not None else "full_attention"] * layers
    layer_types = config.get("layer_types") or default_types
    if len(layer_types) != layers or any(t not in ("sliding_attention", "full_attention") for t in layer_types):
        raise ModelLoadError(f"{source}: layer_types must list 'sliding_attention' or 'full_attention' for each of "
                             f"the {layers} layers: fix or replace the file")
    if window is not None and (not isinstance(window, int) or window < 1):
        raise ModelLoadError(f"{source}: sliding_window={window!r} is not a positive whole number")
    bias = bool(config.get("attention_bias", False))
    return ModelConfig(
        architecture=architecture, vocab_size=_field(config, "vocab_size", source), hidden_size=hidden,
        intermediate_size=_field(config, "intermediate_size", source), num_layers=layers, num_heads=heads,
        num_kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)), rope_theta=float(theta), rope_scaling=scaling,
        max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=architecture == "qwen2" or bias, o_bias=bias and architecture != "qwen2",
        mlp_bias=bool(config.get("mlp_bias", False)),
        sliding_windows=tuple(window if t == "sliding_attention" else None for t in layer_types))


def config_from_gguf(metadata: Mapping[str, Any], tensor_names: frozenset[str], source: str) -> ModelConfig:
    """GGUF metadata under llama.cpp's key names ("{arch}.block_count", ...); biases and tying from the tensors."""
    architecture = _architecture(metadata.get("general.architecture"), source, "general.architecture")
    meta = {key.removeprefix(f"{architecture}."): value for key, value in metadata.items()}
    heads = _field(meta, "attention.head_count", f"{source} ({architecture}.)")
    hidden = _field(meta, "embedding_length", f"{source} ({architecture}.)")
    head_dim = int(meta.get("attention.key_length") or hidden // heads)
    rotary = meta.get("rope.dimension_count", head_dim)
    if rotary != head_dim:
        raise ModelLoadError(f"{source}: {architecture}.rope.dimension_count={rotary} rotates part of each head "
                             f"(head size {head_dim}); only full rotary embedding is supported")
    if "rope_freqs.weight" in tensor_names:
        raise ModelLoadError(f"{source}: tensor 'rope_freqs.weight' (llama3 rope scaling as GGUF stores it) is not "
                             "supported yet: use the model's Hugging Face folder (config.json with rope_scaling)")
    scaling_type = meta.get("rope.scaling.type", "none")
    if scaling_type not in ("none", "linear"):
        raise ModelLoadError(f"{source}: {architecture}.rope.scaling.type {scaling_type!r} is not supported "
                             "(supported: none, linear)")
    linear = scaling_type == "linear"
    scaling = {"rope_type": "linear", "factor": float(meta["rope.scaling.factor"])} if linear else None
    tokens = metadata.get("tokenizer.ggml.tokens")
    layers = _field(meta, "block_count", f"{source} ({architecture}.)")
    window = meta.get("attention.sliding_window")
    return ModelConfig(
        architecture=architecture,
        vocab_size=int(meta.get("vocab_size") or (len(tokens) if tokens else 0)) or _field(meta, "vocab_size", source),
        hidden_size=hidden, intermediate_size=_field(meta, "feed_forward_length", f"{source} ({architecture}.)"),
        num_layers=layers, num_heads=heads, num_kv_heads=int(meta.get("attention.head_count_kv") or heads),
        head_dim=head_dim, rms_norm_eps=float(meta.get("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(meta.get("rope.freq_base", 10000.0)), rope_scaling=scaling,
        max_position_embeddings=int(meta.get("context_length", 2048)),
        tie_word_embeddings="output.weight" not in tensor_names,
        qkv_bias="blk.0.attn_q.bias" in tensor_names, o_bias="blk.0.attn_output.bias" in tensor_names,
        mlp_bias="blk.0.ffn_up.bias" in tensor_names, sliding_windows=(int(window) if window else None,) * layers)
