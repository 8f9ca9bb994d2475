"""GGUF files: block decoding bit for bit against gguf's own dequantization, the header reader against
gguf.GGUFReader, the q/k un-permute, a tiny GGUF against transformers' GGUF loading, and every load error."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from mistralrs_torch import ModelLoadError
from mistralrs_torch.models import load
from mistralrs_torch.models._gguf import GGUFTensor, decode_tensor, read_gguf, reverse_permute
from mistralrs_torch.ops import QuantizedWeight

Q = gguf.GGMLQuantizationType
#: (type, bits, symmetric) of the block types that stay quantized.
QUANTIZED = [(Q.Q8_0, 8, True), (Q.Q4_0, 4, True), (Q.Q4_1, 4, False)]
MIXED = {"token_embd": Q.Q8_0, "attn_q": Q.Q4_0, "attn_k": Q.Q4_1, "attn_v": Q.F16, "attn_output": Q.BF16,
         "ffn_gate": Q.Q4_1, "ffn_up": Q.Q8_0, "ffn_down": Q.Q4_0, "output": Q.F32}


def _mixed(name: str, array: np.ndarray) -> Q:
    return MIXED[name.split(".")[-2]]


def _weights(rows: int = 6, cols: int = 96) -> np.ndarray:
    values = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
    values[0, :32] = 0.0  # an all-zero block: scale 0
    values[1, 32:64] = 5.0  # a constant block: Q4_1's d is 0, its min is everything
    values[2, 5] = -40.0  # an outlier that sets its block's scale
    return values


@pytest.mark.parametrize(("kind", "bits", "symmetric"), QUANTIZED, ids=[k.name for k, _, _ in QUANTIZED])
def test_block_types_become_quantized_weights_equal_to_ggufs_dequantization(kind: Q, bits: int,
                                                                            symmetric: bool) -> None:
    blocks = gguf.quants.quantize(_weights(), kind)
    weight = decode_tensor(GGUFTensor("w", kind, blocks), "test.gguf")
    assert isinstance(weight, QuantizedWeight)
    assert (weight.bits, weight.symmetric, weight.group_size, weight.shape) == (bits, symmetric, 32, (6, 96))
    assert weight.codes.dtype == torch.uint8 and int(weight.codes.max()) < 2**bits
    expected = torch.from_numpy(gguf.quants.dequantize(blocks, kind))
    assert torch.equal(weight.dequantize(torch.float32), expected)  # bit for bit in float32


@pytest.mark.parametrize("kind", [Q.F32, Q.F16, Q.BF16], ids=lambda k: k.name)
def test_dense_types_decode_to_their_own_dtype_exactly(kind: Q) -> None:
    stored = gguf.quants.quantize(_weights(), kind)
    weight = decode_tensor(GGUFTensor("w", kind, stored), "test.gguf")
    assert isinstance(weight, torch.Tensor)
    assert weight.dtype == {Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}[kind]
    assert torch.equal(weight.float(), torch.from_numpy(gguf.quants.dequantize(stored, kind)))


def test_reverse_permute_undoes_llama_cpp_permute_for_dense_and_quantized_rows(tiny) -> None:
    dense = _weights(rows=32, cols=64)
    permuted = tiny.gguf_permute(dense, heads=4)
    assert not np.array_equal(permuted, dense)
    assert torch.equal(reverse_permute(torch.from_numpy(permuted), 4), torch.from_numpy(dense))
    blocks = gguf.quants.quantize(permuted, Q.Q4_1)
    quantized = reverse_permute(decode_tensor(GGUFTensor("w", Q.Q4_1, blocks), "t"), 4)
    unpermuted = gguf.quants.dequantize(gguf.quants.quantize(dense, Q.Q4_1), Q.Q4_1)
    assert torch.equal(quantized.dequantize(), torch.from_numpy(unpermuted))  # rows moved with their scales


def test_header_reader_agrees_with_gguf_reader(tmp_path: Path, tiny, tiny_llama) -> None:
    path = tiny.write_gguf(tmp_path / "tiny.gguf", tiny_llama, _mixed)
    metadata, tensors = read_gguf(path)
    reference = gguf.GGUFReader(path)
    # The reader also lists the header's counts as pseudo-fields named GGUF.*.
    fields = reference.fields.items()
    assert metadata == {name: field.contents() for name, field in fields if not name.startswith("GGUF.")}
    assert set(tensors) == {t.name for t in reference.tensors}
    for theirs in reference.tensors:
        ours = tensors[theirs.name]
        assert ours.tensor_type == theirs.tensor_type
        assert np.array_equal(np.asarray(ours.data).view(np.uint8), np.asarray(theirs.data).view(np.uint8))


def test_a_tiny_mixed_type_gguf_matches_transformers_loading_the_same_file(tmp_path: Path, tiny, tiny_llama) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny.write_gguf(tmp_path / "tiny.gguf", tiny_llama, _mixed)
    model = load(path)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    text = "the other one sat on the mat in the sun"
    ids = model.tokenizer.encode(text)
    assert ids == tokenizer(text).input_ids
    messages = [{"role": "user", "content": "hi there"}]
    assert model.tokenizer.render_chat(messages) == tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)
    ours = model.forward(ids, model.new_cache(len(ids)), all_logits=True)
    with torch.no_grad():
        theirs = reference(torch.tensor([ids])).logits[0]
    # Same dequantized float32 weights, same float32 math in another order: differences are rounding only.
    assert float((ours - theirs).abs().max()) < 1e-4


def test_quantized_weights_stay_quantized_whatever_the_dtype(tmp_path: Path, tiny, tiny_llama) -> None:
    path = tiny.write_gguf(tmp_path / "tiny.gguf", tiny_llama, lambda name, array: Q.Q4_0)
    model = load(path, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    attention = model.network.layers[0].attention
    assert attention.q_proj._call == model.runtime.quantized_linear
    assert model.network.layers[0].input_norm.weight.dtype == torch.bfloat16
    ids = model.tokenizer.encode("the sun")
    assert model.forward(ids, model.new_cache(len(ids))).dtype == torch.float32  # logits are always float32


# -- errors: each names the file and the field, and says what to do ---------------------------------------------


def test_missing_file_and_hub_id(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"missing\.gguf does not exist: pass a Hugging Face model folder"):
        load(tmp_path / "missing.gguf")
    with pytest.raises(ModelLoadError, match=r"'Qwen/Qwen3-4B' is not a local path.*huggingface-cli download "
                                             r"Qwen/Qwen3-4B --local-dir DIR.*-m DIR"):
        load("Qwen/Qwen3-4B")


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ModelLoadError, match=r"model\.gguf is not a GGUF file \(it starts with b'PK"):
        load(path)


@pytest.mark.parametrize("keep", [0.001, 0.5, 0.9999], ids=["in-header", "in-tensors", "last-bytes"])
def test_truncated_file_names_the_file_and_where_it_ends(tmp_path: Path, tiny, tiny_llama, keep: float) -> None:
    whole = tiny.write_gguf(tmp_path / "whole.gguf", tiny_llama, _mixed).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[:max(8, int(len(whole) * keep))])
    with pytest.raises(ModelLoadError, match=r"cut\.gguf is truncated: .*download the file again"):
        load(cut)


def test_unsupported_quantization_type_names_the_tensor_and_type(tmp_path: Path, tiny, tiny_llama) -> None:
    path = tiny.write_gguf(tmp_path / "q5.gguf", tiny_llama, lambda name, array: Q.Q5_0 if "ffn_up" in name else Q.F32)
    with pytest.raises(ModelLoadError, match=r"q5\.gguf: tensor 'blk\.0\.ffn_up\.weight' has type Q5_0.*supported: "
                                             r"F32, F16, BF16, Q8_0, Q4_0, Q4_1"):
        load(path)


def test_unsupported_architecture_names_the_field(tmp_path: Path, tiny, tiny_llama) -> None:
    path = tiny.write_gguf(tmp_path / "phi.gguf", tiny_llama, lambda name, array: Q.F32, architecture="phi3")
    with pytest.raises(ModelLoadError, match=r"phi\.gguf: general\.architecture 'phi3' is not a supported "
                                             r"architecture \(supported: llama, mistral, qwen2"):
        load(path)


def test_unsupported_tokenizer_and_missing_hyperparameter(tmp_path: Path, tiny, tiny_llama) -> None:
    unigram = tiny.write_gguf(tmp_path / "t5.gguf", tiny_llama, lambda name, array: Q.F32,
                              {"tokenizer.ggml.model": ("t5", gguf.GGUFValueType.STRING)})
    with pytest.raises(ModelLoadError, match=r"t5\.gguf: tokenizer\.ggml\.model 't5' is not supported \(supported: "
                                             r"gpt2, byte-level BPE; llama, SentencePiece BPE\)"):
        load(unigram)
    partial = tiny.write_gguf(tmp_path / "partial.gguf", tiny_llama, lambda name, array: Q.F32,
                         {"llama.rope.scaling.type": ("yarn", gguf.GGUFValueType.STRING)})
    with pytest.raises(ModelLoadError, match=r"partial\.gguf: llama\.rope\.scaling\.type 'yarn' is not supported"):
        load(partial)


def test_chat_template_is_read_from_the_file(tmp_path: Path, tiny, tiny_llama) -> None:
    model = load(tiny.write_gguf(tmp_path / "tiny.gguf", tiny_llama, lambda name, array: Q.F32))
    assert model.tokenizer.chat_template == tiny.chat_template
    assert model.tokenizer.stop_ids == frozenset({2})


def _sentencepiece_gguf(path: Path) -> Path:
    """Only a SentencePiece vocabulary (llama.cpp's "llama" tokenizer): specials, 256 byte pieces, then scored
    pieces from which the merges are implied, as Llama 2 and Mistral GGUF files carry them (no merges list)."""
    pieces = ["▁", *"abcdefghijklmnopqrstuvwxyz", "▁t", "he", "▁the", "in", "▁a", "er", "on", "▁s", "at", "▁c",
              "▁cat", "▁m", "▁mat", "▁sat"]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 259 + [-float(i) for i in range(len(pieces))])
    writer.add_token_types([2, 3, 3, *[6] * 256, *[1] * len(pieces)])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)  # llama.cpp's default for SentencePiece vocabularies, said explicitly
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_sentencepiece_vocabulary_tokenizes_as_transformers_does(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from mistralrs_torch.models._tokenizer import tokenizer_from_gguf

    path = _sentencepiece_gguf(tmp_path / "spm.gguf")
    ours = tokenizer_from_gguf(read_gguf(path)[0], str(path))
    reference = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in ["the cat sat on the mat", " leading space", "naïve 日本 🙂", "a\nb", "</s>the"]:
        ids = ours.encode(text)
        # The text's pieces as transformers cuts them; then one BOS, as the file says and llama.cpp does
        # (transformers 5.20, the lock's version for Python 3.10, ignores the file's add_bos_token).
        assert ids[1:] == reference(text, add_special_tokens=False).input_ids, text
        assert ids[0] == 1
        assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True), text
