"""Tiny models for the model-runner tests: random transformers checkpoints, and GGUF files written from them.

Nothing here is downloaded: every checkpoint is made in the test from a seed,
with transformers (the independent reference) saving the Hugging Face folder
and gguf's own writer and quantizers producing the GGUF file, q/k rows
permuted the way llama.cpp's converter permutes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ s"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_alphabet() -> list[str]:
    """GPT-2's printable spelling of the 256 bytes, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spelled, extra = {}, 0
    for b in range(256):
        if b in printable:
            spelled[b] = chr(b)
        else:
            spelled[b] = chr(256 + extra)
            extra += 1
    return [spelled[b] for b in range(256)]


def tiny_vocab() -> list[str]:
    """Specials, the byte alphabet, then one token per merge: 3 + 256 + 8 tokens."""
    return [*SPECIALS, *byte_alphabet(), *(m.replace(" ", "") for m in MERGES)]


def save_tokenizer(folder: Path) -> None:
    """tokenizer.json (byte-level BPE over the tiny vocabulary) and tokenizer_config.json with a chat template."""
    import json

    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(tiny_vocab())}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in MERGES]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": CHAT_TEMPLATE, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>", "tokenizer_class": "PreTrainedTokenizerFast"}))


def randomize(model: Any, seed: int) -> None:
    """Every parameter drawn afresh (biases too, which transformers initialises to zero), norms near one."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.copy_(1 + 0.1 * noise if "norm" in name else noise * parameter.shape[-1] ** -0.5)


def gguf_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permute of q/k rows (the inverse of the loader's reverse_permute)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


_GGUF_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
               "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def gguf_name(name: str) -> str:
    for hf, gguf in (("model.embed_tokens", "token_embd"), ("model.norm", "output_norm"), ("lm_head", "output")):
        if name.startswith(hf + "."):
            return gguf + name[len(hf):]
    _, _, layer, rest = name.split(".", 3)
    stem, suffix = rest.rsplit(".", 1)
    return f"blk.{layer}.{_GGUF_NAMES[stem]}.{suffix}"


def write_gguf(path: Path, model: Any, qtype: Callable[[str, np.ndarray], Any],
               metadata: Mapping[str, Any] | None = None, *, architecture: str = "llama") -> Path:
    """A GGUF file of a transformers Llama-family model: ``qtype(gguf_name, array)`` picks each tensor's type."""
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    tokens = tiny_vocab()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template(CHAT_TEMPLATE)
    for key, value in (metadata or {}).items():
        writer.add_key_value(key, value[0], value[1])
    tied = config.tie_word_embeddings
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        array = tensor.float().numpy()
        if architecture == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.num_attention_heads if "q_proj" in name else config.num_key_value_heads
            array = gguf_permute(array, heads)
        target = gguf_name(name)
        kind = qtype(target, array) if array.ndim == 2 else gguf.GGMLQuantizationType.F32
        data = gguf.quants.quantize(array, kind) if kind != gguf.GGMLQuantizationType.F32 else array
        writer.add_tensor(target, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


#: A tiny Llama-family config: 2 layers, GQA 4/2 heads of 16, a context of 128 tokens.
SMALL = {"vocab_size": len(tiny_vocab()), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, "rms_norm_eps": 1e-5}


def hf_model(model_type: str, overrides: Mapping[str, Any] | None = None, seed: int = 2) -> Any:
    """A seeded random transformers model of ``model_type`` ("llama", "mistral", "qwen2") on SMALL + overrides."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, **{**SMALL, **(overrides or {})})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    randomize(model, seed=seed)
    return model


def save_folder(model: Any, folder: Path, **kwargs: Any) -> Path:
    """A Hugging Face folder of ``model`` (save_pretrained keyword arguments pass through) with the tiny tokenizer."""
    model.save_pretrained(folder, **kwargs)
    save_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama() -> Any:
    """A seeded random 2-layer Llama (GQA 4/2 heads, head size 16) in float32, and its config."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tiny_vocab()), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).eval()
    randomize(model, seed=1)
    return model


def random_llama(
    layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2, seed: int = 3
) -> SimpleNamespace:
    """A Llama-shaped set of random weights under Hugging Face names, without transformers (for write_gguf on
    machines that have no transformers, such as the GPU check's)."""
    import torch

    config = SimpleNamespace(vocab_size=len(tiny_vocab()), hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                             max_position_embeddings=128, rms_norm_eps=1e-5, rope_parameters={"rope_theta": 10000.0},
                             tie_word_embeddings=False)
    head = hidden // heads
    generator = torch.Generator().manual_seed(seed)
    shapes = {"model.embed_tokens.weight": (config.vocab_size, hidden), "model.norm.weight": (hidden,),
              "lm_head.weight": (config.vocab_size, hidden)}
    for i in range(layers):
        shapes |= {f"model.layers.{i}.{name}": shape for name, shape in (
            ("input_layernorm.weight", (hidden,)), ("post_attention_layernorm.weight", (hidden,)),
            ("self_attn.q_proj.weight", (hidden, hidden)), ("self_attn.k_proj.weight", (kv_heads * head, hidden)),
            ("self_attn.v_proj.weight", (kv_heads * head, hidden)), ("self_attn.o_proj.weight", (hidden, hidden)),
            ("mlp.gate_proj.weight", (2 * hidden, hidden)), ("mlp.up_proj.weight", (2 * hidden, hidden)),
            ("mlp.down_proj.weight", (hidden, 2 * hidden)))}
    weights = {name: (1 + 0.1 * torch.randn(shape, generator=generator)) if len(shape) == 1 else
               torch.randn(shape, generator=generator) * shape[-1] ** -0.5 for name, shape in shapes.items()}
    return SimpleNamespace(config=config, state_dict=lambda: weights)


@pytest.fixture(scope="session")
def tiny() -> SimpleNamespace:
    """The helpers above, for test modules (conftest is not importable under --import-mode=importlib)."""
    return SimpleNamespace(chat_template=CHAT_TEMPLATE, vocab=tiny_vocab(), save_tokenizer=save_tokenizer,
                           randomize=randomize, gguf_permute=gguf_permute, write_gguf=write_gguf, hf_model=hf_model,
                           save_folder=save_folder, random_llama=random_llama)


@pytest.fixture
def plain_c_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """CC set to a gcc that drops -march=native (the plain C build, as on a CPU without AVX2), with a kernel
    cache of its own; returns the cache folder."""
    import shutil

    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the kernels without -march=native")
    wrapper = tmp_path / "cc-generic"
    wrapper.write_text('#!/bin/sh\nfor a do shift; case "$a" in -march=*) ;; *) set -- "$@" "$a";; esac; done\n'
                       'exec gcc "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("CC", str(wrapper))
    monkeypatch.setenv("MISTRALRS_KERNEL_CACHE", str(tmp_path / "kernels"))
    return tmp_path / "kernels"
