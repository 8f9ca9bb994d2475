"""`mistralrs tune` fills the tuning cache from a model's real calls; `mistralrs run --selection measured` reads it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click.testing
import gguf
import pytest
from click.testing import CliRunner

from mistralrs_torch.cli import cli


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory, tiny: Any, tiny_llama: Any) -> Path:
    # 4-bit weights with bfloat16 activations: cpu-blockq, cpu-int4pack and cpu-matmul take them: a choice.
    folder = tmp_path_factory.mktemp("tune")
    return tiny.write_gguf(folder / "tiny.gguf", tiny_llama, lambda name, array: gguf.GGMLQuantizationType.Q4_1)


def _cli(*args: str, env: dict[str, str] | None = None) -> click.testing.Result:
    return CliRunner().invoke(cli, list(args), prog_name="mistralrs", env=env)


def test_tune_times_the_contested_signatures_once_and_a_second_tune_reads_them(model_file: Path,
                                                                              tmp_path: Path) -> None:
    cache = tmp_path / "tuning.json"
    first = _cli("tune", "-m", str(model_file), "--dtype", "bfloat16", "--max-prompt-tokens", "4", "--cache",
                 str(cache), "--json")
    assert first.exit_code == 0, first.output
    data = json.loads(first.stdout)
    assert data["schema"] == "mistralrs.tune/1" and data["prompt_lengths"] == [1, 2, 4]
    choices = data["choices"]
    assert choices and all(c["source"] == "measured" for c in choices)
    # The C kernels contest the generic layers and paged attention; dense attention has one backend on the CPU.
    contenders = {"quantized_linear": {"cpu-blockq", "cpu-int4pack", "cpu-matmul"},
                  "rms_norm": {"cpu-native-layers", "cpu-layers"},
                  "rotary_embedding": {"cpu-native-layers", "cpu-layers"},
                  "paged_attention": {"cpu-native-attention", "cpu-attention"},
                  "write_kv_cache": {"cpu-native-attention", "cpu-attention"}}
    assert {c["op"] for c in choices} == set(contenders)
    assert all(set(c["times"]) | set(c["dropped"]) == contenders[c["op"]] and c["winner"] in c["times"]
               for c in choices)
    # One entry per signature, although every layer's projection of that shape asked.
    assert len({c["call"] for c in choices}) == len(choices)
    saved = json.loads(cache.read_text(encoding="utf-8"))
    assert saved["schema"] == "mistralrs.tuning/1" and len(saved["entries"]) == len(choices)
    again = json.loads(_cli("tune", "-m", str(model_file), "--dtype", "bfloat16", "--max-prompt-tokens", "4",
                            "--cache", str(cache), "--json").stdout)
    assert {c["source"] for c in again["choices"]} == {"cache"} and again["seconds"] == 0
    assert {(c["call"], c["winner"]) for c in again["choices"]} == {(c["call"], c["winner"]) for c in choices}


def test_run_with_measured_selection_explains_the_choices_from_the_cache(model_file: Path, tmp_path: Path) -> None:
    cache = tmp_path / "tuning.json"
    assert _cli("tune", "-m", str(model_file), "--dtype", "bfloat16", "--max-prompt-tokens", "2", "--cache",
                str(cache)).exit_code == 0
    result = _cli("run", "-m", str(model_file), "--dtype", "bfloat16", "--selection", "measured", "--prompt", "the",
                  "--raw", "--max-tokens", "2", "--explain", env={"MISTRALRS_TUNING_CACHE": str(cache)})
    assert result.exit_code == 0, result.output
    explained = result.stderr.split("measured selection:", 1)[1]
    assert "quantized_linear [bfloat16 on cpu" in explained and "(cache:" in explained and "(measured:" not in explained


def test_an_unknown_selection_is_a_usage_error_naming_the_choices(model_file: Path) -> None:
    result = _cli("run", "-m", str(model_file), "--selection", "fastest", "--prompt", "the")
    assert result.exit_code == 2 and "'fastest' is not one of 'priority', 'measured'" in result.output
