"""The API key: with one set, every endpoint but /health needs ``Authorization: Bearer KEY``."""

from __future__ import annotations

import hmac

from mistralrs_torch.serve._errors import ApiError

API_KEY_VAR = "MISTRALRS_API_KEY"


def check_key(expected: str | None, header: str | None) -> None:
    """Nothing when no key is set or the header carries it; else a 401 saying what was missing or wrong."""
    if expected is None:
        return
    if not header:
        raise ApiError(401, "this server needs an API key: send the header 'Authorization: Bearer KEY' (the key given "
                            f"to the server with --api-key or {API_KEY_VAR})", code="invalid_api_key")
    scheme, _, key = header.partition(" ")
    # compare_digest: the time taken does not tell how much of a guessed key was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), expected.encode()):
        raise ApiError(401, "the API key in the Authorization header is wrong: send 'Authorization: Bearer KEY' "
                            f"with the key given to the server (--api-key or {API_KEY_VAR})", code="invalid_api_key")
