"""The model runner on an NVIDIA GPU: a tiny 4-bit GGUF Llama in bfloat16 on the GPU against the same file in
float32 on the CPU. Built without transformers, so the GPU check can run it where only torch is installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from mistralrs_torch import Runtime
from mistralrs_torch.models import load

#: bfloat16 activations against float32: logits agree to a few hundredths of their range.
TOLERANCE = 5e-2


@pytest.fixture
def tiny_gguf(tmp_path: Path, tiny: Any) -> Path:
    import gguf

    def qtype(name: str, array: Any) -> Any:
        return gguf.GGMLQuantizationType.Q4_0 if name.startswith("blk.") else gguf.GGMLQuantizationType.Q8_0

    return tiny.write_gguf(tmp_path / "tiny-q4.gguf", tiny.random_llama(), qtype)


def _logits(path: Path, runtime: Runtime, dtype: str, ids: list[int], steps: int) -> tuple[torch.Tensor, list[int]]:
    model = load(path, runtime=runtime, dtype=dtype)
    cache = model.new_cache(len(ids) + steps + 1)
    rows, tokens = [model.forward(ids, cache).float().cpu()], []
    for _ in range(steps):
        tokens.append(int(rows[-1].argmax()))
        rows.append(model.forward([tokens[-1]], cache).float().cpu())
    return torch.stack(rows), tokens


@pytest.mark.gpu
def test_a_4_bit_model_on_the_gpu_matches_the_cpu_in_float32(tiny_gguf: Path) -> None:
    ids = list(range(5, 21))
    expected, greedy = _logits(tiny_gguf, Runtime.create("none", paged_attention=True, environ={}), "float32", ids, 6)
    gpu = Runtime.create("cuda", paged_attention=True, environ={})
    got, _ = _logits(tiny_gguf, gpu, "bfloat16", ids, 6)
    error = float((got - expected).abs().max() / expected.abs().max())
    assert error <= TOLERANCE, error
    top2 = expected.topk(2, dim=-1).values
    clear = (top2[:-1, 0] - top2[:-1, 1]) > 2 * TOLERANCE * float(expected.abs().max())
    assert all(int(got[i].argmax()) == greedy[i] for i in range(len(greedy)) if clear[i])
    ran = {(b.op, b.call.bits): b.chosen for b in gpu.bindings}
    assert ran[("quantized_linear", 4)] == "cuda-int4" and ran[("paged_attention", 0)] == "cuda-sdpa"
