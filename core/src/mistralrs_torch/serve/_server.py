"""A server process: the listening socket, the engine loop and uvicorn, with a graceful stop and an exit status.

SIGTERM and SIGINT stop accepting connections; requests in flight get ``grace`` seconds to finish, then the engine
loop stops and ends each of them with a 503 (a stream with an error event), so every response ends properly
before uvicorn would cut the connections (a few seconds later); the process then exits 0. uvicorn's own handlers
would re-raise the signal once it has shut down (so the process would die by it, status 143); this server catches
the signals itself so that a requested stop is a clean exit. A fatal error (the model did not load, a rank of a
tensor-parallel job died) stops the server too, with exit status 1 and the message on stderr.
"""

from __future__ import annotations

import contextlib
import errno
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import uvicorn

from mistralrs_torch._errors import ConfigError, MistralrsError
from mistralrs_torch.serve._app import Settings, create_app
from mistralrs_torch.serve._loop import EngineLoop
from mistralrs_torch.serve._metrics import Metrics

if TYPE_CHECKING:
    from mistralrs_torch.models import Engine

DEFAULT_GRACE = 10.0
#: How long after the engine loop has ended the requests in flight uvicorn waits for their responses to finish.
_LAST_WORDS = 5.0


class _Uvicorn(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_shutdown()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
        raise ConfigError(f"port {port} on {host} {why}: pick another --port (0 picks a free one) or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Server:
    """Serves the engine that ``load`` makes, on ``host``:``port`` (0: a free port, see :attr:`port`).

    ``run()`` blocks until a signal or a fatal error and returns the exit status; ``start()`` and ``stop()``
    run it in a background thread instead (tests, embedding).
    """

    def __init__(self, load: Callable[[], Engine], settings: Settings, *, host: str = "127.0.0.1", port: int = 0,
                 grace: float = DEFAULT_GRACE) -> None:
        self.settings = settings
        self.socket = _bind(host, port)
        self.host, self.port = host, int(self.socket.getsockname()[1])
        self.metrics = Metrics()
        self.loop = EngineLoop(load, self.metrics, self._fatal)
        self.app = create_app(self.loop, self.metrics, settings)
        self.grace = grace
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False,
                                timeout_graceful_shutdown=round(grace + _LAST_WORDS))
        self._uvicorn = _Uvicorn(config, self._drain)
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None
        self.failure = ""

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _fatal(self, message: str) -> None:
        self.failure = message
        self._uvicorn.should_exit = True

    def _drain(self) -> None:
        """Stop the engine loop ``grace`` seconds from now (or when uvicorn is done, if that comes first)."""
        self._timer = threading.Timer(self.grace, self.loop.stop)
        self._timer.daemon = True
        self._timer.start()

    def run(self) -> int:
        self.loop.start()
        try:
            self._uvicorn.run(sockets=[self.socket])
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self.loop.stop()
            self.socket.close()
        if self.failure:
            print(f"error: {self.failure}", file=sys.stderr)
            return 1
        return 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="mistralrs-server", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float) -> None:
        """Block until the model is loaded and requests are served; MistralrsError if loading failed or took
        longer than ``timeout`` seconds."""
        if not self.loop.settled.wait(timeout):
            raise MistralrsError(f"the model did not load within {timeout:g} s: give it longer, or check the log")
        if self.loop.state != "ready":
            raise MistralrsError(self.loop.error or f"the server is {self.loop.state}")

    def stop(self, timeout: float = 30.0) -> None:
        self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
