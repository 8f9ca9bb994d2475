"""Errors as OpenAI's API shapes them: a status code and ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from typing import Any

from mistralrs_torch._errors import ContextLengthError, KVCacheFullError, MistralrsError

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 500: "internal_error",
          503: "service_unavailable"}


class ApiError(MistralrsError):
    """One request failed: ``status`` is its HTTP status, the message says what was wrong and how to fix it;
    ``param`` names the field of the request body at fault, ``code`` a machine-readable reason."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": _TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


def engine_refusal(exc: MistralrsError, param: str) -> ApiError:
    """The 400 for a request the engine refused when it was added (a prompt longer than the context, a request the
    KV cache could never hold, a token id outside the vocabulary): the engine's own message, which names the fix,
    and OpenAI's code for a prompt over the context."""
    code = ("context_length_exceeded" if isinstance(exc, ContextLengthError)
            else "kv_cache_too_small" if isinstance(exc, KVCacheFullError) else "invalid_prompt")
    return ApiError(400, str(exc), param=param, code=code)
