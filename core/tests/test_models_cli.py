"""`mistralrs run` on a tiny GGUF model: streaming, --json, --explain, the chat, and its usage and model errors."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import click.testing
import gguf
import pytest
from click.testing import CliRunner

from mistralrs_torch.cli import cli
from mistralrs_torch.models import load
from mistralrs_torch.models._progress import Progress


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory, tiny: Any, tiny_llama: Any) -> Path:
    folder = tmp_path_factory.mktemp("run")
    return tiny.write_gguf(folder / "tiny.gguf", tiny_llama, lambda name, array: gguf.GGMLQuantizationType.Q8_0)


def _run(*args: str, stdin: str | None = None) -> click.testing.Result:
    return CliRunner().invoke(cli, ["run", *args], input=stdin, prog_name="mistralrs")


def test_prompt_through_the_chat_template_streams_the_greedy_answer(model_file: Path) -> None:
    model = load(model_file)
    expected = model.generate(model.tokenizer.encode_chat([{"role": "user", "content": "the sun"}]), max_tokens=5)
    result = _run("-m", str(model_file), "--prompt", "the sun", "--max-tokens", "5")
    assert result.exit_code == 0, result.output
    assert result.stdout == expected.text + "\n"
    assert "tokens/s prefill" in result.stderr and "tokens/s decode" in result.stderr


def test_json_is_one_result_with_the_backends_that_ran(model_file: Path) -> None:
    model = load(model_file)
    expected = model.generate(model.tokenizer.encode("the sun"), max_tokens=6)
    result = _run("-m", str(model_file), "--prompt", "the sun", "--raw", "--max-tokens", "6", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["schema"] == "mistralrs.run/1" and data["text"] == expected.text
    assert data["prompt_tokens"] == expected.prompt_tokens and data["completion_tokens"] == len(expected.tokens)
    assert data["finish_reason"] == expected.finish_reason and data["dtype"] == "float32"
    assert {"attention", "paged_attention"} <= {b["op"] for b in data["backends"]}


def test_explain_names_the_backend_of_each_op(model_file: Path) -> None:
    result = _run("-m", str(model_file), "--prompt", "the sun", "--raw", "--max-tokens", "3", "--explain")
    assert result.exit_code == 0, result.output
    assert "backends that ran:" in result.stderr
    assert "paged_attention [float32 on cpu" in result.stderr and "-> cpu-attention" in result.stderr


def test_interactive_chat_on_a_terminal(model_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(click.testing._NamedTextIOWrapper, "isatty", lambda self: True)
    result = _run("-m", str(model_file), "--max-tokens", "3", stdin="the sun\n\nhello\n/exit\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("> ") == 4  # two turns, the skipped empty line, /exit
    assert result.stderr.count("tokens/s decode") == 2


def test_sampling_flags_follow_the_seed_and_equal_the_python_api(model_file: Path) -> None:
    from mistralrs_torch.models import SamplingParams

    flags = ("--temperature", "0.9", "--top-k", "50", "--top-p", "0.95", "--min-p", "0.01",
             "--repetition-penalty", "1.1", "--max-tokens", "12", "--raw", "--json")
    first = _run("-m", str(model_file), "--prompt", "the sun", "--seed", "7", *flags)
    again = _run("-m", str(model_file), "--prompt", "the sun", "--seed", "7", *flags)
    other = _run("-m", str(model_file), "--prompt", "the sun", "--seed", "8", *flags)
    assert first.exit_code == again.exit_code == other.exit_code == 0, first.output
    text = json.loads(first.stdout)["text"]
    assert text == json.loads(again.stdout)["text"] != json.loads(other.stdout)["text"]
    model = load(model_file)
    expected = model.generate(model.tokenizer.encode("the sun"), SamplingParams(
        max_tokens=12, temperature=0.9, top_k=50, top_p=0.95, min_p=0.01, repetition_penalty=1.1, seed=7))
    assert text == expected.text


def test_stop_strings_cut_the_streamed_answer(model_file: Path) -> None:
    model = load(model_file)
    whole = model.generate(model.tokenizer.encode("the sun"), max_tokens=12).text
    stop = whole[4:6]
    result = _run("-m", str(model_file), "--prompt", "the sun", "--raw", "--max-tokens", "12", "--stop", "no such",
                  "--stop", stop)
    assert result.exit_code == 0, result.output
    assert result.stdout == whole[:whole.find(stop)] + "\n" and "(stop)" in result.stderr


def test_a_kv_cache_too_small_for_the_request_is_an_error_naming_the_fix(model_file: Path) -> None:
    result = _run("-m", str(model_file), "--prompt", "the sun", "--max-tokens", "60", "--kv-cache-blocks", "1")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert "the KV cache is out of blocks: a request of" in result.stderr and "--kv-cache-blocks N" in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    ((), "no --prompt and no terminal for an interactive chat: pass --prompt TEXT"),
    (("--prompt", "x", "--max-tokens", "0"), "Invalid value for '--max-tokens'"),
    (("--prompt", "x", "--dtype", "float64"), "Invalid value for '--dtype'"),
    (("--prompt", "x", "--temperature", "-1"), "Invalid value for '--temperature': -1.0 is not in the range x>=0"),
    (("--prompt", "x", "--top-p", "0"), "Invalid value for '--top-p': 0.0 is not in the range 0<x<=1"),
    (("--prompt", "x", "--top-k", "-2"), "Invalid value for '--top-k'"),
    (("--prompt", "x", "--min-p", "1.5"), "Invalid value for '--min-p': 1.5 is not in the range 0<=x<=1"),
    (("--prompt", "x", "--repetition-penalty", "0"), "Invalid value for '--repetition-penalty'"),
    (("--prompt", "x", "--seed", "-1"), "Invalid value for '--seed'"),
    (("--prompt", "x", "--kv-cache-blocks", "0"), "Invalid value for '--kv-cache-blocks'"),
    (("--prompt", "x", "--kv-cache-memory", "0"), "Invalid value for '--kv-cache-memory'"),
    (("--prompt", "x", "--stop", "ok", "--stop", ""), "stop=('ok', '') holds '': give non-empty strings"),
    (("--prompt", "x", "--kv-cache-blocks", "9", "--kv-cache-memory", "1"),
     "--kv-cache-blocks and --kv-cache-memory both size the KV cache: give one"),
])
def test_usage_errors_exit_2(model_file: Path, args: tuple[str, ...], message: str) -> None:
    result = _run("-m", str(model_file), *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_model_errors_exit_1_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    result = _run("-m", "Qwen/Qwen3-4B", "--prompt", "hi")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: 'Qwen/Qwen3-4B' is not a local path")
    assert "Traceback" not in result.stderr
    result = _run("-m", str(tmp_path / "nothing.gguf"), "--prompt", "hi")
    assert result.exit_code == 1 and "nothing.gguf does not exist" in result.stderr


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_load_draws_a_progress_bar_only_on_a_terminal(model_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    terminal = _Terminal()
    bar = Progress("loading tiny.gguf", 3, terminal)
    for _ in range(3):
        bar.advance()
    bar.close()
    assert "\rloading tiny.gguf [" + "#" * 30 + "] 3/3" in terminal.getvalue()
    assert terminal.getvalue().endswith("\r\033[K")  # erased once done
    load(model_file)
    assert capsys.readouterr().out == ""  # stdout is not a terminal here: nothing drawn
