"""The HTTP side: OpenAI's /v1/models, /v1/chat/completions and /v1/completions, plus /health and /metrics.

Each handler checks the key, that the model is ready, the body (size, JSON, fields) and the model name, turns
the request into prompt ids and sampling parameters, and hands them to the engine loop. Answers come back as
one JSON object or, with ``stream: true``, as server-sent events ending in ``data: [DONE]``. A client that goes
away (it closed the connection, or stopped reading a stream) cancels its request, which frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from mistralrs_torch._errors import MistralrsError
from mistralrs_torch.models import RequestOutput, SamplingParams
from mistralrs_torch.serve._auth import check_key
from mistralrs_torch.serve._errors import ApiError
from mistralrs_torch.serve._loop import EngineLoop, Ticket
from mistralrs_torch.serve._metrics import CONTENT_TYPE, Metrics
from mistralrs_torch.serve._schemas import Generation, parse_chat, parse_completion, parse_json

DEFAULT_MAX_BODY_BYTES = 4 * 2**20


@dataclass(frozen=True)
class Settings:
    """What the HTTP side needs to know: the served model's id, the API key (None: no key) and the body limit."""

    model_name: str
    api_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def _sse(data: Any) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class _EventStream(Response):
    """Server-sent events from an async iterator of encoded events; closing it (the client went away, or it
    ended) closes the iterator, whose cleanup cancels the request."""

    def __init__(self, events: AsyncIterator[bytes]) -> None:
        super().__init__(media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async for event in self.events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client is gone; the request is cancelled below
            pass
        finally:
            await self.events.aclose()  # type: ignore[attr-defined]


async def _disconnected(request: Request) -> None:
    """Returns once the client has closed the connection (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _Api:
    def __init__(self, loop: EngineLoop, metrics: Metrics, settings: Settings) -> None:
        self.loop, self.metrics, self.settings = loop, metrics, settings
        self.started = int(time.time())

    # -- checks -----------------------------------------------------------------------------------------

    def _ready(self, request: Request) -> None:
        check_key(self.settings.api_key, request.headers.get("authorization"))
        if self.loop.state != "ready":
            raise self.loop.unavailable()

    async def _json(self, request: Request) -> dict[str, Any]:
        self._ready(request)
        limit = self.settings.max_body_bytes
        too_big = ApiError(413, f"the request body is larger than {limit} bytes: send a shorter prompt",
                           code="body_too_large")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise too_big
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_big
        return parse_json(bytes(body))

    def _model(self, name: str) -> None:
        if name != self.settings.model_name:
            raise ApiError(404, f"model {name!r} is not served here: this server serves "
                                f"{self.settings.model_name!r} (GET /v1/models)", param="model", code="model_not_found")

    def _params(self, generation: Generation, prompt_tokens: int) -> SamplingParams:
        engine = self.loop.engine
        assert engine is not None
        # Without max_tokens: as many as the context and the whole KV cache leave (the engine refuses more).
        capacity = engine.cache.total_blocks * engine.cache.block_size - prompt_tokens + 1
        room = max(1, min(engine.context - prompt_tokens, capacity))
        # Every sampled request gets an explicit seed, so that the ranks of a tensor-parallel job draw alike.
        seed = generation.seed
        if seed is None and generation.temperature > 0:
            seed = secrets.randbits(63)
        try:
            return SamplingParams(max_tokens=generation.max_tokens or room, temperature=generation.temperature,
                                  top_p=generation.top_p, seed=seed, stop=generation.stop)
        except MistralrsError as exc:
            raise ApiError(400, str(exc), code="invalid_value") from None

    # -- endpoints --------------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        if self.loop.state == "ready":
            return JSONResponse({"status": "ok", "model": self.settings.model_name})
        return JSONResponse({"status": self.loop.state, **self.loop.unavailable().body()}, status_code=503)

    async def metrics_text(self, request: Request) -> Response:
        check_key(self.settings.api_key, request.headers.get("authorization"))
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def models(self, request: Request) -> Response:
        self._ready(request)
        return JSONResponse({"object": "list", "data": [{"id": self.settings.model_name, "object": "model",
                                                          "created": self.started, "owned_by": "mistralrs"}]})

    async def chat(self, request: Request) -> Response:
        parsed = parse_chat(await self._json(request))
        self._model(parsed.model)
        assert self.loop.engine is not None
        try:
            prompt = self.loop.engine.tokenizer.encode_chat(parsed.messages)
        except MistralrsError as exc:
            raise ApiError(400, str(exc), param="messages", code="chat_template") from None
        return await self._answer(request, prompt, parsed.generation, chat=True)

    async def completions(self, request: Request) -> Response:
        parsed = parse_completion(await self._json(request))
        self._model(parsed.model)
        assert self.loop.engine is not None
        prompt = (self.loop.engine.tokenizer.encode(parsed.prompt) if isinstance(parsed.prompt, str)
                  else list(parsed.prompt))
        return await self._answer(request, prompt, parsed.generation, chat=False)

    # -- answers ----------------------------------------------------------------------------------------

    async def _answer(self, request: Request, prompt: list[int], generation: Generation, *, chat: bool) -> Response:
        ticket = self.loop.submit(prompt, self._params(generation, len(prompt)))
        try:
            first = await ticket.next()
        except BaseException:
            self.loop.cancel(ticket)
            raise
        if isinstance(first, ApiError):
            raise first
        shape = _Shape(chat, self.settings.model_name, len(prompt))
        outputs = self._outputs(request, ticket)
        if generation.stream:
            return _EventStream(shape.events(outputs, generation.include_usage))
        texts, reason, tokens = [], "stop", 0
        async for output in outputs:
            texts.append(output.text)
            tokens += output.token is not None
            reason = output.finish_reason or reason
        return JSONResponse(shape.whole("".join(texts), reason, tokens))

    async def _outputs(self, request: Request, ticket: Ticket) -> AsyncIterator[RequestOutput]:
        """The request's outputs until it finishes; ends early when the client goes away (cancelling it)."""
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            while True:
                item = asyncio.ensure_future(ticket.next())
                await asyncio.wait({item, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not item.done():
                    item.cancel()
                    return
                output = item.result()
                if isinstance(output, ApiError):
                    raise output
                yield output
                if output.finished:
                    return
        finally:
            gone.cancel()
            self.loop.cancel(ticket)


class _Shape:
    """OpenAI's response objects for one request: a chat completion or a text completion, whole or in chunks."""

    def __init__(self, chat: bool, model: str, prompt_tokens: int) -> None:
        self.chat, self.model, self.prompt_tokens = chat, model, prompt_tokens
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _object(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def _usage(self, tokens: int) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": tokens,
                "total_tokens": self.prompt_tokens + tokens}

    def _choice(self, text: str | None, reason: str | None, first: bool = False) -> dict[str, Any]:
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}
        delta = ({"role": "assistant", "content": text or ""} if first else {"content": text} if text is not None
                 else {})
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}

    def whole(self, text: str, reason: str, tokens: int) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": reason}
            return {**self._object("chat.completion", [choice]), "usage": self._usage(tokens)}
        return {**self._object("text_completion", [self._choice(text, reason)]), "usage": self._usage(tokens)}

    async def events(self, outputs: AsyncIterator[RequestOutput], include_usage: bool) -> AsyncIterator[bytes]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        tokens = 0
        try:
            if self.chat:
                yield _sse(self._object(kind, [self._choice("", None, first=True)]))
            async for output in outputs:
                tokens += output.token is not None
                if output.text:
                    yield _sse(self._object(kind, [self._choice(output.text, None)]))
                if output.finished:
                    yield _sse(self._object(kind, [self._choice(None, output.finish_reason)]))
                    if include_usage:
                        yield _sse({**self._object(kind, []), "usage": self._usage(tokens)})
                    yield b"data: [DONE]\n\n"
        except ApiError as exc:  # the request failed after the stream began: an error event, as OpenAI sends
            yield _sse(exc.body())
        finally:
            await outputs.aclose()  # type: ignore[attr-defined]


def _handled(endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ApiError as exc:
            return _error(exc)

    return handle


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"there is no endpoint {request.url.path}: use /v1/models, /v1/chat/completions, /v1/completions, " \
                  "/health or /metrics"
    else:
        message = f"{request.method} {request.url.path}: {exc.detail}"
    return _error(ApiError(exc.status_code, message, code="unknown_endpoint" if exc.status_code == 404 else None))


async def _internal_error(request: Request, exc: Exception) -> Response:
    return _error(ApiError(500, f"the server failed on this request ({type(exc).__name__}: {exc}); it goes on "
                                "serving: report this with the request that caused it", code="internal_error"))


def create_app(loop: EngineLoop, metrics: Metrics, settings: Settings) -> Starlette:
    """The ASGI app over a started (or starting) engine loop."""
    api = _Api(loop, metrics, settings)
    routes = [Route("/health", _handled(api.health)), Route("/metrics", _handled(api.metrics_text)),
              Route("/v1/models", _handled(api.models)),
              Route("/v1/chat/completions", _handled(api.chat), methods=["POST"]),
              Route("/v1/completions", _handled(api.completions), methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error, Exception: _internal_error})
