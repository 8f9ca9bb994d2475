"""Request bodies of /v1/chat/completions and /v1/completions, checked field by field into typed requests.

Every problem is an :class:`ApiError` (400) naming the field, the value and what to send instead. Fields of
OpenAI's API that this server cannot honour are refused when set to anything but their neutral value, never
silently ignored; fields it does not know are ignored, as OpenAI's own server ignores them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from mistralrs_torch.serve._errors import ApiError

_MAX_STOPS = 4
_MAX_SEED = 2**64 - 1
#: Fields that change the answer in ways this server does not implement, with their neutral values.
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "n": (1, None), "logprobs": (False, None), "top_logprobs": (0, None), "echo": (False, None), "best_of": (1, None),
    "suffix": (None, ""), "tools": (None, []), "functions": (None, []), "logit_bias": (None, {}),
    "presence_penalty": (0, 0.0, None), "frequency_penalty": (0, 0.0, None),
    "response_format": (None, {"type": "text"}),
}
_ROLES = ("system", "user", "assistant")


def _bad(field: str, value: Any, want: str) -> ApiError:
    shown = json.dumps(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return ApiError(400, f"'{field}' is {shown}: {want}", param=field, code="invalid_value")


@dataclass(frozen=True)
class Generation:
    """The sampling fields both endpoints share."""

    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[dict[str, str], ...]
    generation: Generation


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompt: str | tuple[int, ...]
    generation: Generation


def parse_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc}): send one JSON object",
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body is a JSON {type(data).__name__}, not an object: send one JSON object "
                            'such as {"model": ..., "messages": [...]}', code="invalid_json")
    return data


def _number(data: dict[str, Any], field: str, default: float, low: float, high: float, low_open: bool = False,
            ) -> float:
    value = data.get(field)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not (low < value if low_open else low <= value) or value > high:
        raise _bad(field, value, f"give a number in {'(' if low_open else '['}{low:g}, {high:g}]")
    return float(value)


def _whole(data: dict[str, Any], field: str, low: int, high: int) -> int | None:
    value = data.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(field, value, f"give a whole number in {low}..{high}")
    return value


def _generation(data: dict[str, Any]) -> Generation:
    for field, neutral in _UNSUPPORTED.items():
        if field in data and data[field] not in neutral:
            raise _bad(field, data[field], f"this server does not support {field}: leave it out "
                                           f"(or send {json.dumps(neutral[0])})")
    max_tokens = _whole(data, "max_tokens", 1, 2**31)
    if data.get("max_completion_tokens") is not None:
        max_tokens = _whole(data, "max_completion_tokens", 1, 2**31)
    stop = data.get("stop")
    stops: tuple[str, ...] = ()
    if isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list):
        stops = tuple(stop)
    elif stop is not None:
        raise _bad("stop", stop, f"give a string or a list of up to {_MAX_STOPS} strings")
    if len(stops) > _MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise _bad("stop", stop, f"give a string or a list of up to {_MAX_STOPS} non-empty strings")
    stream = data.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream", stream, "give true or false")
    options = data.get("stream_options")
    if options is not None and (not isinstance(options, dict)
                                or not isinstance(options.get("include_usage", False), bool)):
        raise _bad("stream_options", options, 'give {"include_usage": true} or {"include_usage": false}')
    return Generation(max_tokens=max_tokens, temperature=_number(data, "temperature", 1.0, 0, 2),
                      top_p=_number(data, "top_p", 1.0, 0, 1, low_open=True),
                      seed=_whole(data, "seed", 0, _MAX_SEED), stop=stops, stream=bool(stream),
                      include_usage=bool(options and options.get("include_usage")))


def _model(data: dict[str, Any]) -> str:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", model, "give the id of a served model as a string (GET /v1/models lists them)")
    return model


def _content(index: int, content: Any) -> str:
    """A message's text: a string, or a list of text parts."""
    field = f"messages[{index}].content"
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(field, part, 'give a string, or a list of {"type": "text", "text": "..."} parts (this '
                                        "server reads text only)")
            texts.append(part["text"])
        return "".join(texts)
    raise _bad(field, content, "give the message's text as a string")


def parse_chat(data: dict[str, Any]) -> ChatRequest:
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", messages, 'give a non-empty list of {"role": ..., "content": ...} objects')
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(f"messages[{index}]", message, 'give an object {"role": ..., "content": ...}')
        role = message.get("role")
        if role == "developer":  # OpenAI's newer name for the system role
            role = "system"
        if role not in _ROLES:
            raise _bad(f"messages[{index}].role", role, f"give one of {', '.join(_ROLES)}")
        checked.append({"role": role, "content": _content(index, message.get("content"))})
    return ChatRequest(_model(data), tuple(checked), _generation(data))


def parse_completion(data: dict[str, Any]) -> CompletionRequest:
    prompt = data.get("prompt")
    # One prompt: a string or a list of token ids, or either alone in a list (OpenAI's batch form, of one).
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise _bad("prompt", prompt, "give a non-empty string")
        return CompletionRequest(_model(data), prompt, _generation(data))
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return CompletionRequest(_model(data), tuple(prompt), _generation(data))
    raise _bad("prompt", prompt, "give one prompt: a non-empty string or a list of token ids (several prompts in one "
                                 "request are not supported: send one request each)")
