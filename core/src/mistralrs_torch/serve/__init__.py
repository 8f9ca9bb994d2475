"""``mistralrs serve``: an OpenAI-compatible HTTP server with continuous batching over the paged KV cache.

Needs the extra ``mistralrs-torch[serve]`` (starlette and uvicorn). The pieces, each in its own module:

- :mod:`._schemas` checks request bodies; :mod:`._errors` shapes errors as OpenAI does; :mod:`._auth` the key;
- :mod:`._loop` is the engine thread (continuous batching: requests join and leave between steps);
- :mod:`._ranks` keeps the ranks of a tensor-parallel job in lockstep (rank 0 schedules, the others follow);
- :mod:`._metrics` writes Prometheus text; :mod:`._app` is the ASGI app; :mod:`._server` runs it with uvicorn.
"""

from mistralrs_torch.serve._app import DEFAULT_MAX_BODY_BYTES, Settings, create_app
from mistralrs_torch.serve._auth import API_KEY_VAR
from mistralrs_torch.serve._errors import ApiError
from mistralrs_torch.serve._loop import EngineLoop
from mistralrs_torch.serve._metrics import Metrics
from mistralrs_torch.serve._ranks import follow
from mistralrs_torch.serve._server import DEFAULT_GRACE, Server

__all__ = [
           "API_KEY_VAR",
           "DEFAULT_GRACE",
           "DEFAULT_MAX_BODY_BYTES",
           "ApiError",
           "EngineLoop",
           "Metrics",
           "Server",
           "Settings",
           "create_app",
           "follow",
]
