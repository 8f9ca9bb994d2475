"""Runtime conveniences the model loader relies on: load_safetensors(dtype=) and the paged-attention opt-in error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mistralrs_torch import UnsupportedCallError
from mistralrs_torch.runtime import Runtime, load_safetensors


def test_load_safetensors_casts_floating_point_tensors_to_dtype_and_keeps_integer_ones(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    weight = torch.randn(4, 8, dtype=torch.bfloat16)
    codes = torch.randint(0, 255, (4, 8), dtype=torch.uint8)
    save_file({"weight": weight, "codes": codes}, str(path))
    loaded = load_safetensors(path, dtype=torch.float32)
    assert loaded["weight"].dtype == torch.float32 and torch.equal(loaded["weight"], weight.float())
    assert loaded["codes"].dtype == torch.uint8 and torch.equal(loaded["codes"], codes)
    runtime = Runtime.create(features="none")
    assert runtime.load_safetensors(path, names=["weight"], dtype=torch.float16)["weight"].dtype == torch.float16
    assert load_safetensors(path)["weight"].dtype == torch.bfloat16  # no dtype: as stored


def test_the_paged_attention_opt_in_error_names_the_python_and_the_cli_switch() -> None:
    runtime = Runtime.create(features="none", paged_attention=False, environ={})
    q = torch.randn(1, 2, 1, 16)
    cache = torch.zeros(2, 16, 2, 16)
    with pytest.raises(UnsupportedCallError, match=r"Runtime\.create\(paged_attention=True\), .*--paged-attn"):
        runtime.paged_attention(q, cache, cache, torch.zeros(1, 2, dtype=torch.int32),
                                torch.ones(1, dtype=torch.int32))
