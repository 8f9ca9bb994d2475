"""Loading safetensors files that are damaged, or slices that do not fit: every error names the file (and the
tensor), and no slice is silently clipped."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from mistralrs_torch import ConfigError
from mistralrs_torch.runtime import TensorSlice, load_safetensors

W = torch.arange(6 * 8, dtype=torch.float32).reshape(6, 8)


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    save_file({"w": W, "b": torch.ones(3)}, str(path))
    return path


def _damaged(weights: Path, content: bytes) -> Path:
    path = weights.with_name("damaged.safetensors")
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("damage", [
    lambda data: data[:-8],  # truncated: the last tensor's bytes are missing
    lambda data: b"",
    lambda data: b"hello world, not a safetensors file",
    lambda data: data[:8] + b"{not json" + data[17:],
    lambda data: struct.pack("<Q", 1 << 40) + data[8:],  # a header length far beyond the file
], ids=["truncated", "empty", "text", "bad header JSON", "absurd header length"])
def test_a_corrupt_file_is_a_config_error_naming_it(weights: Path, damage) -> None:
    path = _damaged(weights, damage(weights.read_bytes()))
    with pytest.raises(ConfigError) as raised:
        load_safetensors(path)
    assert str(path) in str(raised.value) and "not a readable safetensors file" in str(raised.value)


def test_a_tensor_whose_bytes_do_not_match_its_header_names_file_and_tensor(weights: Path) -> None:
    data = weights.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    header["w"]["dtype"] = "F64"  # twice the bytes its offsets cover
    text = json.dumps(header).encode()
    path = _damaged(weights, struct.pack("<Q", len(text)) + text + data[8 + size:])
    with pytest.raises(ConfigError) as raised:
        load_safetensors(path)
    assert str(path) in str(raised.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"{tmp_path / 'none.safetensors'} does not exist"):
        load_safetensors(tmp_path / "none.safetensors")


@pytest.mark.parametrize(("part", "words"), [
    (TensorSlice(0, 5, 99), "outside its 6 entries (shape [6, 8]): give 0 <= start <= stop <= 6"),
    (TensorSlice(1, -2, 4), "outside its 8 entries"),
    (TensorSlice(0, 4, 2), "outside its 6 entries"),
    (TensorSlice(2, 0, 1), "the tensor has 2 dimensions"),
    (TensorSlice(0, 0.5, 2), "must be integers"),  # type: ignore[arg-type]  # a wrong type on purpose: the refusal is what is tested
])
def test_a_slice_outside_its_tensor_is_an_error_not_a_clipped_tensor(weights: Path, part: TensorSlice,
                                                                      words: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_safetensors(weights, names=["w"], slices={"w": part})
    message = str(raised.value)
    assert str(weights) in message and "tensor 'w'" in message and words in message, message


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(dim=st.integers(-3, 3), start=st.integers(-10, 12), stop=st.integers(-10, 12))
def test_any_slice_is_exact_or_refused(tmp_path_factory: pytest.TempPathFactory, dim: int, start: int,
                                       stop: int) -> None:
    path = tmp_path_factory.getbasetemp() / "slices.safetensors"
    if not path.exists():
        save_file({"w": W}, str(path))
    try:
        loaded = load_safetensors(path, names=["w"], slices={"w": TensorSlice(dim, start, stop)})["w"]
    except ConfigError as exc:
        assert str(path) in str(exc) and "'w'" in str(exc)
        return
    index = (slice(None),) * (dim % 2) + (slice(start, stop),)
    assert -2 <= dim < 2 and 0 <= start <= stop <= W.shape[dim % 2]
    assert torch.equal(loaded, W[index])  # exactly the rows asked for, never fewer
