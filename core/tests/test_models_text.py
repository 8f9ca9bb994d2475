"""Streaming detokenisation, RoPE frequencies and config parsing, each against an independent answer."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from mistralrs_torch import ModelLoadError
from mistralrs_torch.models import TextStream, TextTokenizer
from mistralrs_torch.models._config import config_from_hf
from mistralrs_torch.ops import rope_inv_freq


def _byte_tokenizer(tiny: Any) -> TextTokenizer:
    """Byte-level BPE with no merges past single bytes' spelling: every multi-byte character spans several tokens."""
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tiny.vocab)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return TextTokenizer(backend)


def test_streamed_text_never_splits_a_character_and_adds_up_to_the_whole(tiny: Any) -> None:
    tokenizer = _byte_tokenizer(tiny)
    text = "naïve café: 日本語 🙂 ok\n"
    ids = tokenizer.encode(text)
    assert len(ids) == len(text.encode("utf-8"))  # one token per byte, so 🙂 takes four
    stream = TextStream(tokenizer)
    pieces = [stream.push(token) for token in ids]
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert pieces.count("") == len(ids) - len(text)  # one empty push per continuation byte


@pytest.mark.parametrize("scaling", [
    None,
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 8192},
], ids=["default", "linear", "llama3"])
def test_rope_inverse_frequencies_equal_transformers(scaling: dict[str, Any] | None) -> None:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(hidden_size=2048, num_attention_heads=16, rope_theta=500000.0, rope_scaling=scaling)
    if scaling is None:
        expected = 1.0 / (500000.0 ** (torch.arange(0, 128, 2, dtype=torch.int64).float() / 128))
    else:
        expected, _ = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](config, "cpu")
    assert torch.equal(rope_inv_freq(128, 500000.0, scaling), expected)


BASE = {"model_type": "llama", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}


def test_transformers_4_and_5_spellings_of_rope_read_the_same() -> None:
    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    v4 = config_from_hf({**BASE, "rope_theta": 5e5, "rope_scaling": {"type": "llama3", **scaling}}, "v4.json")
    v5 = config_from_hf({**BASE, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, **scaling}}, "v5.json")
    assert v4 == v5
    assert v5.rope_theta == 5e5 and v5.rope_scaling == {"rope_type": "llama3", **scaling}


def test_qwen2_slides_only_when_asked_and_only_from_max_window_layers() -> None:
    qwen = {**BASE, "model_type": "qwen2", "sliding_window": 32768, "max_window_layers": 1}
    assert config_from_hf({**qwen, "use_sliding_window": False}, "c").sliding_windows == (None, None)
    assert config_from_hf({**qwen, "use_sliding_window": True}, "c").sliding_windows == (None, 32768)
    assert config_from_hf(qwen, "c").qkv_bias and not config_from_hf(qwen, "c").o_bias


@pytest.mark.parametrize(("change", "message"), [
    ({"hidden_act": "gelu"}, r"c\.json: hidden_act 'gelu' is not supported \(supported: silu\)"),
    ({"num_attention_heads": "4"}, r"c\.json: num_attention_heads='4' is not a positive whole number"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, r"rope_scaling of type 'llama3' has no numeric "
                                                                r"'low_freq_factor'"),
    ({"layer_types": ["full_attention"]}, r"layer_types must list .* for each of the 2 layers"),
])
def test_bad_config_fields_are_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        config_from_hf({**BASE, **change}, "c.json")
