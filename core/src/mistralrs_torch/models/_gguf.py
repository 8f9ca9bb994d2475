"""GGUF files: metadata, and tensors decoded into torch tensors or group-wise QuantizedWeight.

The block layouts (ggml's, 32 values per block):

- Q8_0: float16 scale d, 32 int8 q;             w = d * q        -> symmetric 8-bit, codes = q + 128
- Q4_0: float16 scale d, 16 bytes of nibbles;   w = d * (q - 8)  -> symmetric 4-bit, codes = q
- Q4_1: float16 d, float16 m, 16 bytes nibbles; w = d * q + m    -> asymmetric 4-bit, offsets = m

In a 4-bit block, byte j holds value j in its low nibble and value j + 16 in
its high nibble. Each mapping is exact: QuantizedWeight.dequantize computes
the same float32 products and sums as ggml's dequantization.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from mistralrs_torch._errors import ModelLoadError
from mistralrs_torch.ops import QuantizedWeight

_Q = GGMLQuantizationType
_BLOCK = 32


def _dense(data: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(data))  # a copy: the reader's memory map is read-only


def _bf16(data: np.ndarray) -> torch.Tensor:
    rows = np.ascontiguousarray(data).view(np.int16)  # the reader hands BF16 out as raw bytes
    return torch.from_numpy(rows.copy()).view(torch.bfloat16)


def _blocks(data: np.ndarray, block_bytes: int) -> np.ndarray:
    rows = data.shape[0]
    return np.ascontiguousarray(data).reshape(rows, -1, block_bytes)


def _half(blocks: np.ndarray, start: int) -> torch.Tensor:
    """The float16 at byte ``start`` of every block, as float32 (rows, blocks)."""
    values = np.ascontiguousarray(blocks[..., start:start + 2]).view(np.float16)[..., 0]
    return torch.from_numpy(values.astype(np.float32))


def _nibbles(packed: np.ndarray) -> torch.Tensor:
    """(rows, blocks, 16) bytes -> (rows, blocks * 32) codes: low nibbles first, then high ones."""
    codes = np.concatenate([packed & 0x0F, packed >> 4], axis=-1)
    return torch.from_numpy(codes.reshape(packed.shape[0], -1))


def _q8_0(data: np.ndarray) -> QuantizedWeight:
    blocks = _blocks(data, 2 + _BLOCK)
    codes = (blocks[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return QuantizedWeight(torch.from_numpy(codes.reshape(blocks.shape[0], -1)), _half(blocks, 0), None, 8, _BLOCK)


def _q4_0(data: np.ndarray) -> QuantizedWeight:
    blocks = _blocks(data, 2 + _BLOCK // 2)
    return QuantizedWeight(_nibbles(blocks[..., 2:]), _half(blocks, 0), None, 4, _BLOCK)


def _q4_1(data: np.ndarray) -> QuantizedWeight:
    blocks = _blocks(data, 4 + _BLOCK // 2)
    return QuantizedWeight(_nibbles(blocks[..., 4:]), _half(blocks, 0), _half(blocks, 2), 4, _BLOCK)


#: The tensor types this runner decodes, each to a dense tensor or a QuantizedWeight.
GGUF_TYPES: dict[GGMLQuantizationType, Callable[[np.ndarray], torch.Tensor | QuantizedWeight]] = {
    _Q.F32: _dense, _Q.F16: _dense, _Q.BF16: _bf16, _Q.Q8_0: _q8_0, _Q.Q4_0: _q4_0, _Q.Q4_1: _q4_1}

#: GGUF tensor names (after "blk.N.") -> Hugging Face names (after "model.layers.N.").
HF_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
            "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
            "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_name(name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor name, or None for a tensor the model does not use."""
    stem, _, suffix = name.rpartition(".")
    if stem in _TOP:
        return f"{_TOP[stem]}.{suffix}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in HF_NAMES:
        return f"model.layers.{parts[1]}.{HF_NAMES[parts[2]]}.{suffix}"
    return None


def decode_tensor(tensor: GGUFTensor, source: str) -> torch.Tensor | QuantizedWeight:
    """One tensor in its own precision: dense types as torch tensors, 8/4-bit block types as QuantizedWeight."""
    decode = GGUF_TYPES.get(tensor.tensor_type)
    if decode is None:
        raise ModelLoadError(
            f"{source}: tensor {tensor.name!r} has type {tensor.tensor_type.name}, which this runner does not decode "
            f"(supported: {', '.join(t.name for t in GGUF_TYPES)}): use a GGUF file quantized to one of those "
            "(e.g. llama.cpp's llama-quantize ... Q8_0 or Q4_0)")
    return decode(tensor.data)


def reverse_permute(weight: torch.Tensor | QuantizedWeight, heads: int) -> torch.Tensor | QuantizedWeight:
    """Undo llama.cpp's q/k row interleaving (its RoPE pairs adjacent values; transformers' rotates halves).

    Rows move as whole rows, so a QuantizedWeight's codes, scales and offsets move together, exactly.
    """
    rows = weight.shape[0]
    order = torch.arange(rows).reshape(heads, rows // heads // 2, 2).transpose(1, 2).reshape(-1)
    if isinstance(weight, QuantizedWeight):
        offsets = None if weight.offsets is None else weight.offsets[order]
        return QuantizedWeight(weight.codes[order], weight.scales[order], offsets, weight.bits, weight.group_size)
    return weight[order]


class GGUFTensor(NamedTuple):
    """One tensor of a GGUF file: ``data`` is a read-only view of its bytes (rows, row bytes) or values."""

    name: str
    tensor_type: GGMLQuantizationType
    data: np.ndarray


class _Header:
    """A cursor over the file's bytes that turns running past the end into the truncation error."""

    def __init__(self, path: Path, data: np.ndarray) -> None:
        self.path, self.data, self.offset = path, data, 0

    def take(self, size: int) -> bytes:
        if self.offset + size > len(self.data):
            raise ModelLoadError(f"{self.path} is truncated: its header runs past the end of the file "
                                 f"({len(self.data)} bytes): download the file again")
        chunk = self.data[self.offset:self.offset + size].tobytes()
        self.offset += size
        return chunk

    def scalar(self, kind: GGUFValueType) -> Any:
        fmt = _SCALARS[kind]
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.scalar(GGUFValueType.UINT64)).decode("utf-8", errors="replace")

    def value(self, kind: GGUFValueType) -> Any:
        if kind == GGUFValueType.STRING:
            return self.string()
        if kind == GGUFValueType.ARRAY:
            item = GGUFValueType(self.scalar(GGUFValueType.UINT32))
            return [self.value(item) for _ in range(self.scalar(GGUFValueType.UINT64))]
        return self.scalar(kind)


_SCALARS = {GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
            GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
            GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
            GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d"}


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, GGUFTensor]]:
    """The metadata (key -> Python value) and the tensors by name; a damaged file is one clear error.

    The header is parsed here with gguf's type tables rather than by gguf.GGUFReader, which builds a
    numpy view per string and takes seconds on a 49k-token vocabulary; tests hold the two equal.
    """
    data = np.memmap(path, mode="r")
    if data[:4].tobytes() != b"GGUF":
        raise ModelLoadError(f"{path} is not a GGUF file (it starts with {data[:4].tobytes()!r}, not b'GGUF'): pass "
                             "a .gguf file or a Hugging Face folder")
    header = _Header(path, data)
    header.offset = 4
    version = header.scalar(GGUFValueType.UINT32)
    if version not in (2, 3):
        raise ModelLoadError(f"{path}: GGUF version {version} is not supported (supported: 2, 3): convert the model "
                             "again with a current llama.cpp")
    tensor_count, kv_count = header.scalar(GGUFValueType.UINT64), header.scalar(GGUFValueType.UINT64)
    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = header.string()
        metadata[key] = header.value(GGUFValueType(header.scalar(GGUFValueType.UINT32)))
    infos = []
    for _ in range(tensor_count):
        name = header.string()
        dims = [header.scalar(GGUFValueType.UINT64) for _ in range(header.scalar(GGUFValueType.UINT32))]
        kind, offset = header.scalar(GGUFValueType.UINT32), header.scalar(GGUFValueType.UINT64)
        infos.append((name, dims, kind, offset))
    alignment = int(metadata.get("general.alignment", 32))
    start = -(-header.offset // alignment) * alignment
    tensors = {}
    for name, dims, kind, offset in infos:
        try:
            tensor_type = GGMLQuantizationType(kind)
        except ValueError:
            raise ModelLoadError(f"{path}: tensor {name!r} has ggml type {kind}, which the gguf package does not know: "
                                 "update gguf (pip install -U gguf) or use another file") from None
        block, block_bytes = GGML_QUANT_SIZES[tensor_type]
        shape = tuple(reversed(dims))  # GGUF lists the fastest-varying dimension first
        size = math.prod(dims) // block * block_bytes
        end = start + offset + size
        if end > len(data):
            raise ModelLoadError(f"{path} is truncated: tensor {name!r} ends at byte {end} but the file has "
                                 f"{len(data)} bytes: download the file again")
        raw = data[start + offset:end]
        if tensor_type in _VALUE_TYPES:
            tensors[name] = GGUFTensor(name, tensor_type, raw.view(_VALUE_TYPES[tensor_type]).reshape(shape))
        else:
            tensors[name] = GGUFTensor(name, tensor_type, raw.reshape(*shape[:-1], shape[-1] // block * block_bytes))
    return metadata, tensors


_VALUE_TYPES = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}
