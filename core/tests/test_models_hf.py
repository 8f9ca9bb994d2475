"""Tiny random Hugging Face checkpoints, one per architecture, against transformers on the same files.

Each checkpoint is made here with transformers (seeded, every parameter
random, saved as safetensors), loaded by mistralrs_torch.models.load, and run
through a prefill and several decode steps on the runtime's ops (dense
attention, then paged attention over the KV cache). The reference is
transformers recomputing the whole sequence from scratch at every step, so
it shares no cache logic with the code under test.

Tolerance: 1e-4 absolute on float32 logits of magnitude about 1 to 10. Both
sides compute the same float32 math in different orders (fused kernels,
paged gathers), which moves logits by about 1e-6 here; 1e-4 leaves room for
other backends' summation orders while a wrong mask, RoPE or bias shows up
as 1e-2 or more.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mistralrs_torch import ConfigError, ModelLoadError
from mistralrs_torch.models import load

TOLERANCE = 1e-4
PROMPT = [5, 80, 17, 42, 8, 64, 3, 91, 27, 11, 150, 9, 33, 210, 14, 77, 60, 120, 2, 45]  # 20 tokens
STEPS = 6
WINDOW = 8  # Mistral's sliding window: shorter than the prompt, so prefill and decode both slide

CASES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    # name: (model_type, config overrides, save_pretrained keyword arguments)
    "llama3-rope": ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                               "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                              "rope_theta": 500000.0}, {}),
    "linear-rope": ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, {}),
    "mistral-sliding-window": ("mistral", {"sliding_window": WINDOW}, {}),
    "qwen2-qkv-bias": ("qwen2", {}, {}),
    "tied-embeddings": ("llama", {"tie_word_embeddings": True}, {}),
    "sharded": ("llama", {}, {"max_shard_size": "60KB"}),
}


def _reference_logits(model: Any, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokens]), use_cache=False).logits[0].float()


def _compare(folder: Path, reference: Any) -> tuple[float, int]:
    """Greedy decode on our side; returns the largest logit difference and how many steps had a clear top-2 margin."""
    model = load(folder)
    cache = model.new_cache(len(PROMPT) + STEPS)
    tokens = list(PROMPT)
    ours = model.forward(tokens, cache, all_logits=True)
    worst = float((ours - _reference_logits(reference, tokens)).abs().max())
    clear = 0
    for _ in range(STEPS):
        expected = _reference_logits(reference, tokens)[-1]
        top2 = expected.topk(2).values
        if float(top2[0] - top2[1]) > TOLERANCE:
            assert int(ours[-1].argmax()) == int(expected.argmax())
            clear += 1
        tokens.append(int(ours[-1].argmax()))
        ours = model.forward([tokens[-1]], cache)[None]
        worst = max(worst, float((ours[-1] - _reference_logits(reference, tokens)[-1]).abs().max()))
    return worst, clear


@pytest.mark.parametrize("case", list(CASES))
def test_tiny_checkpoint_matches_transformers_on_prefill_and_decode(tmp_path: Path, tiny: Any, case: str) -> None:
    model_type, overrides, save = CASES[case]
    reference = tiny.hf_model(model_type, overrides)
    folder = tiny.save_folder(reference, tmp_path / case, **save)
    if case == "sharded":
        assert (folder / "model.safetensors.index.json").is_file() and not (folder / "model.safetensors").exists()
        assert len(set(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"].values())) > 2
    worst, clear = _compare(folder, reference)
    assert worst < TOLERANCE
    assert clear >= STEPS // 2  # the greedy check really compared tokens


def test_the_sliding_window_is_exercised(tmp_path: Path, tiny: Any) -> None:
    """Without the window the logits differ far beyond the tolerance, in prefill and in decode, so the match above
    (with it) proves the window is applied in both; the decode ring also wraps (20 + 6 tokens, window 8)."""
    model_type, overrides, _ = CASES["mistral-sliding-window"]
    windowed = tiny.hf_model(model_type, overrides)
    full = tiny.hf_model(model_type, {"sliding_window": None})
    assert torch.equal(windowed.lm_head.weight, full.lm_head.weight)  # same seed, same weights
    model = load(tiny.save_folder(windowed, tmp_path / "mistral"))
    assert model.config.sliding_windows == (WINDOW, WINDOW)
    cache = model.new_cache(len(PROMPT) + 2)
    prefill = model.forward(PROMPT, cache, all_logits=True)
    assert float((prefill[WINDOW:] - _reference_logits(full, PROMPT)[WINDOW:]).abs().max()) > 100 * TOLERANCE
    assert float((prefill[:WINDOW] - _reference_logits(full, PROMPT)[:WINDOW]).abs().max()) < TOLERANCE
    step = model.forward([7], cache)
    assert float((step - _reference_logits(full, [*PROMPT, 7])[-1]).abs().max()) > 100 * TOLERANCE
    assert float((step - _reference_logits(windowed, [*PROMPT, 7])[-1]).abs().max()) < TOLERANCE


def test_tokenizer_and_chat_template_match_transformers(tmp_path: Path, tiny: Any) -> None:
    from transformers import AutoTokenizer

    folder = tiny.save_folder(tiny.hf_model("llama"), tmp_path / "llama")
    model = load(folder)
    reference = AutoTokenizer.from_pretrained(folder)
    for text in ["the other one", "  naïve café, 日本語 🙂\n\tend", "<|im_start|>user"]:
        assert model.tokenizer.encode(text) == reference(text).input_ids
        assert model.tokenizer.decode(model.tokenizer.encode(text)) == reference.decode(
            reference(text).input_ids, skip_special_tokens=True)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    rendered = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert model.tokenizer.render_chat(messages) == rendered
    assert model.tokenizer.encode_chat(messages) == reference.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert model.tokenizer.stop_ids == frozenset({2})  # eos from config.json and tokenizer_config.json


def test_dtype_casts_dense_weights_and_stays_close(tmp_path: Path, tiny: Any) -> None:
    reference = tiny.hf_model("llama")
    folder = tiny.save_folder(reference, tmp_path / "llama")
    model = load(folder, dtype=torch.bfloat16)
    assert model.network.embed.table.dtype == torch.bfloat16
    logits = model.forward(PROMPT, model.new_cache(len(PROMPT)), all_logits=True)
    # bfloat16 keeps 8 bits of mantissa: logits of magnitude about 5 move by a few hundredths through 2 layers.
    assert float((logits - _reference_logits(reference, PROMPT)).abs().max()) < 0.25
    with pytest.raises(ConfigError, match="dtype 'float64' is not supported: choose one of float32, bfloat16"):
        load(folder, dtype="float64")


# -- errors ----------------------------------------------------------------------------------------------------


def test_folder_errors_name_the_file_and_the_field(tmp_path: Path, tiny: Any) -> None:
    folder = tiny.save_folder(tiny.hf_model("llama"), tmp_path / "llama", max_shard_size="60KB")
    config = json.loads((folder / "config.json").read_text())

    def with_config(**changes: Any) -> None:
        (folder / "config.json").write_text(json.dumps({**config, **changes}))

    with_config(model_type="gpt2")
    with pytest.raises(ModelLoadError, match=r"config\.json: model_type 'gpt2' is not a supported architecture"):
        load(folder)
    with_config(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4})
    with pytest.raises(ModelLoadError, match=r"config\.json: rope_parameters rope_type 'yarn' is not supported "
                                             r"\(supported: default, linear, llama3\)"):
        load(folder)
    with_config(num_hidden_layers=3)
    with pytest.raises(ModelLoadError, match=r"has no tensor 'model\.layers\.2\.self_attn\.q_proj\.weight'"):
        load(folder)
    with_config(hidden_size=None)
    with pytest.raises(ModelLoadError, match=r"config\.json has no 'hidden_size'"):
        load(folder)
    with_config()
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ConfigError, match=rf"{shard.name} is not a readable safetensors file"):
        load(folder)
    shard.unlink()
    with pytest.raises(ModelLoadError, match=rf"model\.safetensors\.index\.json 'weight_map' names {shard.name}, "
                                             "which is not in"):
        load(folder)
    (folder / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"config\.json is missing"):
        load(folder)


def test_a_runtime_without_paged_attention_is_refused_with_the_fix(tmp_path: Path, tiny: Any) -> None:
    from mistralrs_torch.runtime import Runtime

    folder = tiny.save_folder(tiny.hf_model("llama"), tmp_path / "llama")
    with pytest.raises(ConfigError, match=r"Runtime\.create\(paged_attention=True\)"):
        load(folder, runtime=Runtime.create(paged_attention=False))
