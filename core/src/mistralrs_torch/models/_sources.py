"""Where a model's pieces come from: a Hugging Face folder or a GGUF file, read into one shape.

A source gives the config, the tokenizer, the stop ids and a weight getter
that reads one tensor at a time under its Hugging Face name (so a progress
bar can follow and no second copy of the checkpoint sits in memory), or one
slice of it for a tensor-parallel rank: safetensors read only the slice from
disk; GGUF tensors are decoded whole, then cut (whole quantization groups).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from mistralrs_torch._errors import ModelLoadError
from mistralrs_torch.models._config import ModelConfig, config_from_gguf, config_from_hf, read_json
from mistralrs_torch.models._gguf import decode_tensor, hf_name, read_gguf, reverse_permute
from mistralrs_torch.models._layers import Weight
from mistralrs_torch.models._tokenizer import TextTokenizer, tokenizer_from_gguf, tokenizer_from_hf
from mistralrs_torch.parallel._sharding import slice_weight
from mistralrs_torch.runtime import Runtime
from mistralrs_torch.runtime._loading import TensorSlice


@dataclass(frozen=True)
class Source:
    """A checkpoint opened but not yet read: ``weight(name, part)`` reads one tensor, or only ``part`` of it when that
    is not None (dense tensors cast to the dtype)."""

    path: Path
    config: ModelConfig
    tokenizer: TextTokenizer
    available: frozenset[str]
    weight: Callable[[str, TensorSlice | None], Weight]


def _eos_ids(value: object) -> set[int]:
    if isinstance(value, int):
        return {value}
    return {v for v in value if isinstance(v, int)} if isinstance(value, list) else set()


def _safetensors_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the file holding it, from model.safetensors or a sharded model.safetensors.index.json."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{index} has no 'weight_map' naming the shard of each tensor: get the file again")
        files = {name: folder / str(shard) for name, shard in weight_map.items()}
        missing = sorted({str(p.name) for p in files.values() if not p.is_file()})
        if missing:
            raise ModelLoadError(f"{index} 'weight_map' names {missing[0]}, which is not in {folder}"
                                 f"{f' (nor {len(missing) - 1} other shard(s))' if len(missing) > 1 else ''}: "
                                 "download every shard of the checkpoint")
        return files
    single = folder / "model.safetensors"
    if not single.is_file():
        others = sorted(p.name for p in folder.glob("*.bin")) or sorted(p.name for p in folder.glob("*.gguf"))
        hint = f" (it holds {', '.join(others[:3])}: pass a .gguf file directly, or convert .bin weights to " \
               "safetensors with transformers' save_pretrained)" if others else ""
        raise ModelLoadError(f"{folder} has neither model.safetensors nor model.safetensors.index.json{hint}: "
                             "download the checkpoint's safetensors files")
    return {name: single for name in _keys(single)}


def _keys(path: Path) -> list[str]:
    try:
        with safe_open(str(path), framework="pt") as file:
            return list(file.keys())
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(f"{path} is truncated or not a safetensors file ({exc}): download it again") from None


def hf_source(folder: Path, runtime: Runtime, dtype: torch.dtype) -> Source:
    """A Hugging Face folder: config.json, safetensors weights, tokenizer files, generation_config.json if present."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{config_path} is missing: a Hugging Face model folder holds config.json, "
                             "model.safetensors (or a sharded index) and tokenizer.json")
    raw = read_json(config_path)
    config = config_from_hf(raw, str(config_path))
    generation = folder / "generation_config.json"
    stops = _eos_ids(raw.get("eos_token_id")) | (_eos_ids(read_json(generation).get("eos_token_id"))
                                                 if generation.is_file() else set())
    files = _safetensors_files(folder)

    def weight(name: str, part: TensorSlice | None) -> Weight:
        # A damaged shard is load_safetensors' ConfigError, naming the file and the tensor.
        slices = None if part is None else {name: part}
        return runtime.load_safetensors(files[name], names=[name], slices=slices, dtype=dtype)[name]

    return Source(folder, config, tokenizer_from_hf(folder, stops), frozenset(files), weight)


def gguf_source(path: Path, dtype: torch.dtype) -> Source:
    """A GGUF file: metadata, embedded tokenizer, tensors under their Hugging Face names (q/k rows un-permuted)."""
    metadata, tensors = read_gguf(path)
    config = config_from_gguf(metadata, frozenset(tensors), str(path))
    names = {hf: name for name in tensors if (hf := hf_name(name)) is not None}
    # llama.cpp interleaves the q/k rows of Llama-layout models for its RoPE; Qwen2 files are stored as is.
    permuted = config.architecture in ("llama", "mistral")

    def weight(name: str, part: TensorSlice | None) -> Weight:
        value = decode_tensor(tensors[names[name]], str(path))
        if permuted and name.endswith(("q_proj.weight", "k_proj.weight")):
            value = reverse_permute(value, config.num_heads if "q_proj" in name else config.num_kv_heads)
        if part is not None:
            value = slice_weight(value, part, name)
        return value.to(dtype) if isinstance(value, torch.Tensor) else value

    return Source(path, config, tokenizer_from_gguf(metadata, str(path)), frozenset(names), weight)


def check_complete(source: Source, needed: list[str]) -> None:
    """Raise naming the first tensor the model needs that the checkpoint lacks."""
    missing = [n for n in needed if n not in source.available]
    if missing:
        raise ModelLoadError(f"{source.path} has no tensor {missing[0]!r}"
                             f"{f' (and {len(missing) - 1} more missing)' if len(missing) > 1 else ''}, which a "
                             f"{source.config.architecture} model with this config needs: the checkpoint is incomplete "
                             f"or does not match its config; get it again. It holds e.g. "
                             f"{', '.join(sorted(source.available)[:4])}")
