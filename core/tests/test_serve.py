"""`mistralrs serve` with real clients: the official openai client and raw HTTP (httpx) on 127.0.0.1 and ephemeral
ports, the server in-process (uvicorn in a thread) except for the command-line tests, which run it as a process.

Batching correctness: concurrent greedy requests return the tokens each prompt gives alone through the engine
(float32). A batch changes the shapes of every matmul, which moves logits by about 2e-6 here, so identity is
asserted up to the first step whose alone run has a top-2 logit margin within TOLERANCE = 1e-4 (as in
test_models_engine); past a near tie the two runs may legitimately be different sequences.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from mistralrs_torch.models import Engine, Model, SamplingParams, load
from mistralrs_torch.serve import Server, Settings

TOLERANCE = 1e-4
KEY = "test-key"
TIMEOUT = 120.0  # every client call and wait is bounded by this (seconds)
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, tiny: Any) -> Path:
    return tiny.save_folder(tiny.hf_model("llama"), tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def model(folder: Path) -> Model:
    return load(folder)


def _wait_ready(url: str, deadline: float = TIMEOUT) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} did not become ready within {deadline} s")


@contextmanager
def _serving(load_engine: Callable[[], Engine], **settings: Any) -> Iterator[Server]:
    server = Server(load_engine, Settings("tiny", **settings))
    server.start()
    try:
        yield server
    finally:
        server.stop()
        assert server.loop.state in ("stopped", "failed")


@pytest.fixture(scope="module")
def server(model: Model) -> Iterator[Server]:
    with _serving(lambda: Engine(model), api_key=KEY, max_body_bytes=MAX_BODY) as running:
        running.wait_ready(TIMEOUT)
        yield running


@pytest.fixture
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=TIMEOUT)


def _metrics(server: Server) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).text
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if not line.startswith("#")}


def _wait_idle(server: Server) -> dict[str, float]:
    """The metrics once no request runs or waits (cancellations reach the engine loop between steps)."""
    end = time.monotonic() + 30
    while True:
        metrics = _metrics(server)
        if metrics["mistralrs_requests_running"] == metrics["mistralrs_requests_waiting"] == 0 \
                or time.monotonic() > end:
            return metrics
        time.sleep(0.05)


# -- the openai client ------------------------------------------------------------------------------------


def test_chat_completion_models_and_usage(client: openai.OpenAI, model: Model) -> None:
    messages = [{"role": "user", "content": "the sun"}]
    expected = model.generate(model.tokenizer.encode_chat(messages), max_tokens=6)
    answer = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6,  # type: ignore[arg-type]
                                            temperature=0)
    assert answer.object == "chat.completion" and answer.model == "tiny"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == expected.text
    assert answer.choices[0].finish_reason == expected.finish_reason
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (expected.prompt_tokens,
                                                                             len(expected.tokens))
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_completion_from_text_and_from_token_ids(client: openai.OpenAI, model: Model) -> None:
    ids = model.tokenizer.encode("the other one")
    expected = model.generate(ids, max_tokens=5)
    for prompt in ("the other one", ids):
        answer = client.completions.create(model="tiny", prompt=prompt, max_tokens=5, temperature=0)
        assert answer.object == "text_completion"
        assert answer.choices[0].text == expected.text
        assert answer.usage is not None and answer.usage.prompt_tokens == len(ids)


def test_streaming_gives_the_same_text_and_ends_with_done(client: openai.OpenAI, server: Server,
                                                          model: Model) -> None:
    messages = [{"role": "user", "content": "a stream"}]
    expected = model.generate(model.tokenizer.encode_chat(messages), max_tokens=8)
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8,  # type: ignore[arg-type]
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == expected.finish_reason
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(expected.tokens)
    # The raw events: each one "data: {json}", the last "data: [DONE]".
    with httpx.stream("POST", server.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "tiny", "prompt": "x y", "max_tokens": 4, "stream": True},
                      timeout=TIMEOUT) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(json.loads(e.removeprefix("data: "))["object"] == "text_completion" for e in events[:-1])


def test_stop_strings_and_seeded_sampling(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="tiny", prompt="stop here", max_tokens=12, temperature=0)
    text = whole.choices[0].text
    stop = text[4:6]
    assert len(stop) == 2, text
    cut = client.completions.create(model="tiny", prompt="stop here", max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    sampled = [client.completions.create(model="tiny", prompt="seeded", max_tokens=8, temperature=1.0, top_p=0.9,
                                         seed=7).choices[0].text for _ in range(2)]
    assert sampled[0] == sampled[1]


# -- errors -----------------------------------------------------------------------------------------------


BAD_BODIES = {
    "no messages": ({"model": "tiny"}, "messages"),
    "messages not a list": ({"model": "tiny", "messages": "hi"}, "messages"),
    "unknown role": ({"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    "content a number": ({"model": "tiny", "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    "temperature a string": ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
                             "temperature"),
    "top_p zero": ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_p": 0}, "top_p"),
    "max_tokens zero": ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
                        "max_tokens"),
    "n of two": ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    "stop a number": ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stop": 5}, "stop"),
    "seed negative": ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "seed": -1}, "seed"),
    "model missing": ({"messages": [{"role": "user", "content": "x"}]}, "model"),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_fields_are_400_naming_the_field(server: Server, case: str) -> None:
    body, field = BAD_BODIES[case]
    response = httpx.post(server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                          timeout=TIMEOUT)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field and error["type"] == "invalid_request_error" and field in error["message"]


def test_malformed_json_long_prompts_and_big_bodies(server: Server, model: Model) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    post = lambda path, **kw: httpx.post(server.url + path, headers=headers, timeout=TIMEOUT, **kw)  # noqa: E731
    for content in (b"{not json", b"[1, 2]", "\udcff".encode("utf-8", "surrogatepass")):
        response = post("/v1/chat/completions", content=content)
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    context = model.config.max_position_embeddings
    response = post("/v1/completions", json={"model": "tiny", "prompt": [5] * (context + 10), "max_tokens": 2})
    error = response.json()["error"]
    assert response.status_code == 400 and str(context) in error["message"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"  # OpenAI's code for it
    response = post("/v1/completions", json={"model": "tiny", "prompt": [100_000], "max_tokens": 2})
    assert response.status_code == 400 and "vocabulary" in response.json()["error"]["message"]
    response = post("/v1/completions", json={"model": "tiny", "prompt": "x" * (MAX_BODY + 1)})
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    response = httpx.get(server.url + "/v1/nothing", headers=headers, timeout=TIMEOUT)
    assert response.status_code == 404 and "/v1/chat/completions" in response.json()["error"]["message"]


def test_openai_client_errors_and_the_api_key(client: openai.OpenAI, server: Server) -> None:
    with pytest.raises(openai.NotFoundError, match="'other' is not served here"):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="tiny", prompt="x", max_tokens=-3)
    for key in ("wrong", None):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = httpx.get(server.url + "/v1/models", headers=headers, timeout=TIMEOUT)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/metrics", timeout=TIMEOUT).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0, timeout=TIMEOUT).models.list()
    assert httpx.get(server.url + "/health", timeout=TIMEOUT).status_code == 200  # the one open endpoint


def test_a_failure_inside_the_engine_fails_that_request_alone(client: openai.OpenAI, server: Server,
                                                              model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    forward = model.network.forward
    calls = {"n": 0}

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected failure")
        return forward(*args, **kwargs)

    monkeypatch.setattr(model.network, "forward", failing_once)
    with pytest.raises(openai.InternalServerError, match="injected failure"):
        client.completions.create(model="tiny", prompt="fails", max_tokens=3, temperature=0)
    answer = client.completions.create(model="tiny", prompt="goes on", max_tokens=3, temperature=0)
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert _wait_idle(server)["mistralrs_kv_blocks_used"] == 0


# -- batching ---------------------------------------------------------------------------------------------


def _alone(model: Model, prompt: list[int], max_tokens: int) -> tuple[list[int], str, int]:
    """(tokens the prompt gives alone, their text, steps before the first near tie)."""
    engine = Engine(model, keep_logits=True)
    request = engine.add(prompt, SamplingParams(max_tokens=max_tokens))
    tokens, text, clear = [], "", None
    while engine.has_unfinished:
        for output in engine.step():
            assert output.request_id == request and output.logits is not None
            top2 = output.logits.topk(2).values
            if clear is None and float(top2[0] - top2[1]) <= TOLERANCE:
                clear = len(tokens)
            if output.token is not None:
                tokens.append(output.token)
            text += output.text
    return tokens, text, len(tokens) if clear is None else clear


def test_16_concurrent_greedy_requests_give_what_each_gives_alone(server: Server, model: Model) -> None:
    prompts = [[(7 * i + 3 * j) % 250 + 3 for j in range(1 + 5 * i)] for i in range(16)]  # 1 to 76 tokens
    expected = [_alone(model, p, 10) for p in prompts]
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=TIMEOUT)

    async def ask(prompt: list[int]) -> Any:
        return await client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0)

    async def all_at_once() -> list[Any]:
        async with client:
            return await asyncio.wait_for(asyncio.gather(*(ask(p) for p in prompts)), TIMEOUT)

    answers = asyncio.run(all_at_once())
    whole = 0
    for (tokens, alone, clear), answer in zip(expected, answers, strict=True):
        text = answer.choices[0].text
        if clear == len(tokens):
            assert text == alone
            assert answer.usage.completion_tokens == len(tokens)
            whole += 1
        else:  # identical up to the near tie (a character cut there shows as U+FFFD in the decoded prefix)
            assert text.startswith(model.tokenizer.decode(tokens[:clear]).rstrip("\ufffd"))
    assert whole >= 12, f"only {whole} of 16 requests had a clear margin at every step"


def test_64_streaming_clients_a_quarter_cancelled_leave_every_block_free(server: Server, model: Model) -> None:
    before = _metrics(server)
    # Prompts whose greedy answers run the full max_tokens, so the cancelled ones are cut mid-stream.
    candidates = [[(11 * i + 5 * j) % 250 + 3 for j in range(2 + i % 13)] for i in range(100)]
    long = [p for p in candidates if model.generate(p, max_tokens=24).finish_reason == "length"]
    assert len(long) >= 16
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=TIMEOUT)

    async def one(index: int) -> tuple[int, str | None]:
        cancel = index % 4 == 0
        prompt = long[index % len(long)] if cancel else candidates[index]
        stream = await client.completions.create(model="tiny", prompt=prompt, max_tokens=24, temperature=0,
                                                 stream=True)
        chunks, reason = 0, None
        async for chunk in stream:
            chunks += 1
            reason = chunk.choices[0].finish_reason or reason
            if cancel and chunks == 3:
                await stream.close()  # the client goes away mid-stream
                break
        return chunks, reason

    async def everyone() -> list[tuple[int, str | None]]:
        async with client:
            return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(64))), TIMEOUT)

    results = asyncio.run(everyone())
    assert all(reason is None and chunks == 3 for chunks, reason in results[::4])
    assert all(reason in ("stop", "length") for i, (_, reason) in enumerate(results) if i % 4)
    after = _wait_idle(server)
    assert after["mistralrs_requests_running"] == after["mistralrs_requests_waiting"] == 0
    assert after["mistralrs_kv_blocks_used"] == 0
    assert after["mistralrs_kv_blocks_free"] == server.loop.engine.cache.total_blocks  # type: ignore[union-attr]
    cancelled = after.get('mistralrs_requests_finished_total{outcome="cancelled"}', 0) - before.get(
        'mistralrs_requests_finished_total{outcome="cancelled"}', 0)
    assert cancelled == 16
    first_tokens = "mistralrs_time_to_first_token_seconds_count"
    assert after[first_tokens] >= before[first_tokens] + 64


# -- start-up, the command line and shutdown --------------------------------------------------------------


def test_health_is_503_until_the_model_is_loaded(model: Model) -> None:
    loaded = threading.Event()

    def slow() -> Engine:
        assert loaded.wait(TIMEOUT)
        return Engine(model)

    with _serving(slow) as server:
        assert httpx.get(server.url + "/health", timeout=TIMEOUT).status_code == 503
        response = httpx.post(server.url + "/v1/completions", json={"model": "tiny", "prompt": "x"}, timeout=TIMEOUT)
        assert response.status_code == 503 and "loading" in response.json()["error"]["message"]
        loaded.set()
        server.wait_ready(TIMEOUT)
        assert httpx.get(server.url + "/health", timeout=TIMEOUT).status_code == 200


def _environ() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISTRALRS_") and k != "RING_CONFIG"}
    env.pop("PYTHONPATH", None)
    return env


def test_the_command_serves_and_exits_0_on_sigterm(folder: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "mistralrs_torch", "serve", "-m", str(folder), "--port", "0",
                                "--grace", "1"], stderr=subprocess.PIPE, text=True, env=_environ())
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert f"mistralrs serve: {folder.name} on http://127.0.0.1:" in line, line
        url = line.split(" on ")[1].split()[0]
        _wait_ready(url)
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=TIMEOUT)
        answer = client.chat.completions.create(model=folder.name, messages=[{"role": "user", "content": "x"}],
                                                max_tokens=3, temperature=0)
        assert answer.choices[0].finish_reason in ("stop", "length")
        # A stream in flight when SIGTERM comes ends properly after the grace period: finished, or cut with an
        # error event (the tiny model runs 100 tokens in more than the 1 s of grace here).
        with httpx.stream("POST", url + "/v1/completions", timeout=TIMEOUT,
                          json={"model": folder.name, "prompt": "x", "max_tokens": 100, "stream": True}) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            process.send_signal(signal.SIGTERM)
            last = [line for line in lines if line][-1]
        assert last == "data: [DONE]" or json.loads(last.removeprefix("data: "))["error"]["code"] == "shutdown"
        assert process.wait(timeout=30) == 0
        assert "Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        process.stderr.close()  # type: ignore[union-attr]


def test_without_the_extra_the_command_names_it() -> None:
    code = ("import sys; sys.modules['starlette'] = None; from mistralrs_torch.cli import main; "
            "sys.argv = ['mistralrs', 'serve', '-m', 'nowhere']; main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_environ(),
                            timeout=TIMEOUT, check=False)
    assert result.returncode == 2, result.stderr
    assert "pip install 'mistralrs-torch[serve]'" in result.stderr and "Traceback" not in result.stderr


def test_an_unknown_selection_policy_is_a_usage_error_naming_the_choices() -> None:
    from click.testing import CliRunner

    from mistralrs_torch.cli import cli

    result = CliRunner().invoke(cli, ["serve", "-m", "nowhere", "--selection", "fastest"], prog_name="mistralrs")
    assert result.exit_code == 2 and "'fastest' is not one of 'priority', 'measured'" in result.output


# -- tensor parallel: the schedule rank 0 broadcasts ------------------------------------------------------


class _Recorder:
    """Rank 0 of a two-rank job, in one process: keeps what it sends."""

    rank, world_size = 0, 2

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def all_reduce(self, tensor: Any, op: str = "sum") -> Any:
        self.sent.append(tensor.clone())
        return tensor

    def broadcast(self, tensor: Any, src: int = 0) -> Any:
        self.sent.append(tensor.clone())
        return tensor


class _Replay:
    """Rank 1: receives what the recorder sent, in order (all_reduce adds rank 0's value to its zero)."""

    rank, world_size = 1, 2

    def __init__(self, sent: list[Any]) -> None:
        self.sent = iter(sent)

    def all_reduce(self, tensor: Any, op: str = "sum") -> Any:
        return tensor.add_(next(self.sent))

    def broadcast(self, tensor: Any, src: int = 0) -> Any:
        return tensor.copy_(next(self.sent))


def test_a_follower_applies_rank_0s_ticks_in_lockstep(model: Model) -> None:
    from mistralrs_torch.serve import follow
    from mistralrs_torch.serve._ranks import Tick, apply, publish

    leader, wire = Engine(model), _Recorder()
    sampled = SamplingParams(max_tokens=40, temperature=0.8, top_p=0.9, seed=3, stop=("ab",))
    ticks = [Tick(adds=[([5, 6, 7], SamplingParams(max_tokens=4)), ([9] * 200, SamplingParams()), ([8], sampled)]),
             Tick(), Tick(aborts=[0]), Tick(), Tick(), Tick()]
    states = []
    for tick in ticks:
        tick.step = True
        publish(wire, tick)
        apply(leader, tick)
        leader.step()
        states.append((leader.running, leader.waiting))
    publish(wire, Tick(stop=True))
    assert Tick.decode(ticks[0].encode()) == ticks[0]  # the too-long prompt is refused alike on every rank
    follower = Engine(model)
    follow(follower, _Replay(wire.sent))  # type: ignore[arg-type]
    assert states[0] == ((0, 1), ()) and states[-1] == ((1,), ())  # the sampled request still runs
    assert (follower.running, follower.waiting) == states[-1]
    assert follower.cache.used_blocks == leader.cache.used_blocks > 0


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _rank(pid: int) -> int:
    variables = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(v for v in variables if v.startswith(b"RANK=")).removeprefix(b"RANK="))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _TwoRanks:
    """A two-rank ring job serving the tiny model: `mistralrs launch -n 2 --backend ring -- mistralrs serve`, or the
    seed's form, one `mistralrs serve` per rank started by hand with its own RING_CONFIG. ``leader`` is the
    process whose exit status the job's is (launch, or rank 0), ``ranks`` maps rank -> pid."""

    def __init__(self, form: str, folder: Path, tmp_path: Path) -> None:
        env = {**_environ(), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
               "MISTRALRS_COLLECTIVE_TIMEOUT": "20", "MISTRALRS_RENDEZVOUS_TIMEOUT": "120"}
        executable = str(Path(sys.executable).with_name("mistralrs"))
        serve = [executable, "serve", "-m", str(folder), "--served-model-name", "tiny", "--port", "0"]
        self.processes: list[subprocess.Popen[str]] = []
        self.follower_log = tmp_path / "rank1.err"
        if form == "launch":
            self.leader = self._start([executable, "launch", "-n", "2", "--backend", "ring", "--", *serve], env)
            self.prefix = "[rank 0] "
        else:
            subprocess.run([executable, "ring", "configs", "-n", "2", "--master-port", str(_free_port()),
                            "--base-port", str(_free_port()), "--out", str(tmp_path / "ring")], check=True,
                           env=env, capture_output=True, timeout=TIMEOUT)
            self.leader = self._start(serve, {**env, "RING_CONFIG": str(tmp_path / "ring" / "rank0.json")})
            with self.follower_log.open("w") as log:
                self._start(serve, {**env, "RING_CONFIG": str(tmp_path / "ring" / "rank1.json")}, log)
            self.prefix = ""
        assert self.leader.stderr is not None
        self.first_line = self.leader.stderr.readline()
        self.ranks = ({_rank(pid): pid for pid in _children(self.leader.pid)} if form == "launch"
                      else {rank: process.pid for rank, process in enumerate(self.processes)})

    def _start(self, command: list[str], env: dict[str, str], log: Any = None) -> subprocess.Popen[str]:
        process = subprocess.Popen(command, stderr=log or subprocess.PIPE, text=True, env=env,
                                   start_new_session=True)
        self.processes.append(process)
        return process

    def others_output(self) -> str:
        """What the job wrote to stderr besides the first line, and the hand-started rank 1's log."""
        assert self.leader.stderr is not None
        return self.leader.stderr.read() + (self.follower_log.read_text() if self.follower_log.exists() else "")

    def close(self) -> None:
        for pid in self.ranks.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            if process.stderr is not None:
                process.stderr.close()


@pytest.mark.multiprocess
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the launched ranks through Linux's /proc")
@pytest.mark.parametrize("form", ["launch", "ring-config-by-hand"])
def test_two_ring_ranks_serve_what_one_process_serves_and_a_dead_rank_ends_it(form: str, folder: Path, model: Model,
                                                                              tmp_path: Path) -> None:
    """The tiny model split over two ranks (4 heads, 2 KV heads) answers 16 concurrent greedy requests as one
    process does alone; killing rank 1 mid-stream ends that stream with a 503 error event and the job, non-zero,
    within the collective timeout (20 s here)."""
    prompts = [[(13 * i + 7 * j) % 250 + 3 for j in range(1 + 5 * i)] for i in range(16)]  # 1 to 76 tokens
    expected = [_alone(model, p, 8) for p in prompts]
    job = _TwoRanks(form, folder, tmp_path)
    try:
        assert job.first_line.startswith(f"{job.prefix}mistralrs serve: tiny on http://127.0.0.1:"), job.first_line
        url = job.first_line.split(" on ")[1].split()[0]
        _wait_ready(url)
        assert sorted(job.ranks) == [0, 1]
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=TIMEOUT)

        async def all_at_once() -> list[Any]:
            async with client:
                return await asyncio.wait_for(asyncio.gather(*(client.completions.create(
                    model="tiny", prompt=p, max_tokens=8, temperature=0) for p in prompts)), TIMEOUT)

        whole = 0
        for (tokens, alone, clear), answer in zip(expected, asyncio.run(all_at_once()), strict=True):
            if clear == len(tokens):
                assert answer.choices[0].text == alone
                whole += 1
            else:
                assert answer.choices[0].text.startswith(model.tokenizer.decode(tokens[:clear]).rstrip("\ufffd"))
        assert whole >= 12, f"only {whole} of 16 requests had a clear margin at every step"
        # Rank 1 dies while a stream runs: the stream ends with an error event, the job exits non-zero.
        with httpx.stream("POST", url + "/v1/completions", timeout=TIMEOUT,
                          json={"model": "tiny", "prompt": "x", "max_tokens": 100, "stream": True}) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            killed = time.monotonic()
            os.kill(job.ranks[1], signal.SIGKILL)
            last = [line for line in lines if line][-1]
        error = json.loads(last.removeprefix("data: "))["error"]
        assert error["type"] == "service_unavailable" and "a rank of the tensor-parallel job failed" in error["message"]
        assert job.leader.wait(timeout=60) != 0
        assert time.monotonic() - killed < 20 + 10  # the collective timeout, and the time to shut down
        assert "mistralrs serve:" not in job.others_output()  # only rank 0 listened
    finally:
        job.close()
