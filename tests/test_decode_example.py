"""examples/decode.py: greedy decoding through the runtime (dense prefill, paged decode, linear, int8 linear)
matches a float64 reference recomputed from scratch, and the comparison catches a broken KV cache."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "decode.py"


@pytest.fixture
def decode() -> ModuleType:
    spec = importlib.util.spec_from_file_location("decode_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("features", "dtype"), [("auto", "float32"), ("none", "float32"), ("auto", "bfloat16")])
def test_greedy_decoding_through_the_runtime_matches_the_reference(decode, capsys, features, dtype) -> None:
    assert decode.main(["--steps", "6", "--features", features, "--dtype", dtype]) == 0
    out = capsys.readouterr().out
    assert "matches the float64 reference" in out and ", 0 fallback(s)" in out, out
    for op in ("attention", "paged_attention", "linear", "int8_linear"):
        assert f"  {op} [{dtype} on cpu" in out, out
    assert out.count("sequence ") == 2


def test_a_kv_cache_written_one_slot_late_is_caught(decode, monkeypatch, capsys) -> None:
    write = decode.RuntimeModel._write

    def one_late(self, layer, b, start, k, v):  # decode steps land one position after where they belong
        write(self, layer, b, start + 1 if start else 0, k, v)

    monkeypatch.setattr(decode.RuntimeModel, "_write", one_late)
    assert decode.main(["--steps", "2", "--features", "none"]) == 1
    assert "DIFFERS FROM the float64 reference" in capsys.readouterr().out
