"""The engine loop: one thread owns the Engine; request handlers talk to it through tickets.

Handlers (on the server's event loop) submit a prompt and get a :class:`Ticket`; the loop thread takes new
submissions and cancellations between steps, so requests join the running batch at the next step and leave it
as soon as they finish, are cancelled (a client that went away) or fail. Outputs go back to each ticket's
asyncio queue through ``call_soon_threadsafe``. A step that raises fails the requests of that step alone (the
engine dropped them and freed their blocks); the loop goes on with the others. A failed collective (tensor
parallel: a rank died) is fatal: every open request fails with 503 and the server is told to exit.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mistralrs_torch._errors import CollectiveError, MistralrsError
from mistralrs_torch.serve._errors import ApiError, engine_refusal
from mistralrs_torch.serve._metrics import Metrics
from mistralrs_torch.serve._ranks import Tick, apply, publish

if TYPE_CHECKING:
    from mistralrs_torch.models import Engine, RequestOutput, SamplingParams
    from mistralrs_torch.ops import Communicator

#: Longest idle wait of the loop; with several ranks also the most time between two ticks to the followers.
_IDLE = 0.5


@dataclass(frozen=True)
class Accepted:
    """The first item of a ticket whose request the engine took (else the first item is an ApiError)."""

    prompt_tokens: int


class Ticket:
    """One request, seen from its handler: ``await ticket.next()`` gives Accepted or an ApiError, then
    RequestOutputs until one is finished (or an ApiError when the request failed)."""

    def __init__(self, prompt: list[int], params: SamplingParams, event_loop: asyncio.AbstractEventLoop) -> None:
        self.prompt, self.params = prompt, params
        self.arrived = time.perf_counter()
        self._event_loop = event_loop
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.request_id: int | None = None  # set by the loop thread once added
        self.last_token: float | None = None
        self.closed = False  # set by the loop thread once nothing more will come

    def put(self, item: Any) -> None:
        """From the loop thread."""
        try:
            self._event_loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody waits for this any more
            pass

    async def next(self) -> Any:
        return await self._queue.get()


class EngineLoop:
    """Owns the engine in a thread of its own: ``start()``, ``submit``/``cancel`` from handlers, ``stop()``.

    ``load`` makes the engine (in the thread, so that the server answers /health with 503 meanwhile);
    ``on_fatal`` is called with a message when loading fails or a collective fails.
    """

    def __init__(self, load: Callable[[], Engine], metrics: Metrics, on_fatal: Callable[[str], None]) -> None:
        self._load, self._metrics, self._on_fatal = load, metrics, on_fatal
        self._cv = threading.Condition()
        self._inbox: list[Ticket] = []
        self._cancels: list[Ticket] = []
        self._stopping = False
        self._tickets: dict[int, Ticket] = {}
        self._thread = threading.Thread(target=self._run, name="mistralrs-engine", daemon=True)
        self.engine: Engine | None = None
        self.leader: Communicator | None = None  # set when other ranks follow this one
        self.state = "loading"  # then "ready", "failed" or "stopped"
        self.error = ""
        self.settled = threading.Event()  # set once loading is over (ready or failed)

    # -- handlers' side ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, prompt: list[int], params: SamplingParams) -> Ticket:
        ticket = Ticket(prompt, params, asyncio.get_running_loop())
        with self._cv:
            if self.state != "ready" or self._stopping:
                raise self.unavailable()
            self._inbox.append(ticket)
            self._cv.notify()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Drop the request (its client went away or it is done with it); a no-op once it has finished."""
        with self._cv:
            if ticket in self._inbox:
                self._inbox.remove(ticket)
            elif not ticket.closed:
                self._cancels.append(ticket)
                self._cv.notify()

    def unavailable(self) -> ApiError:
        why = {"loading": "the model is still loading: retry shortly (GET /health answers 200 once it is ready)",
               "failed": f"the server failed and is shutting down: {self.error}"}.get(
            self.state, "the server is shutting down: retry on another instance")
        return ApiError(503, why, code="unavailable")

    def stop(self, timeout: float | None = None) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the thread -------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            engine = self._load()
            communicator = engine.model.runtime.communicator()
            self.leader = communicator if communicator.world_size > 1 else None
        except BaseException as exc:  # noqa: BLE001 - reported to the server, which exits with it
            self._fail(f"loading the model failed: {exc}" if not isinstance(exc, MistralrsError) else str(exc))
            return
        self.engine = engine
        self._publish_state()
        with self._cv:
            self.state = "ready" if not self._stopping else "stopped"
        self.settled.set()
        try:
            while self._round(engine):
                pass
        except CollectiveError as exc:
            self._fail(f"a rank of the tensor-parallel job failed: {exc}")
            return
        with self._cv:
            self.state = "stopped"

    def _fail(self, message: str) -> None:
        with self._cv:
            self.state, self.error = "failed", message
            pending, self._inbox = self._inbox, []
        for ticket in [*pending, *self._tickets.values()]:
            self._close(ticket, self.unavailable(), "error")
        self._tickets.clear()
        self.settled.set()
        self._on_fatal(message)

    def _round(self, engine: Engine) -> bool:
        """Take what arrived, tell the followers, add and abort, step once; False once stopped."""
        with self._cv:
            if not (self._inbox or self._cancels or self._stopping or engine.has_unfinished):
                self._cv.wait(_IDLE)
            adds, self._inbox = self._inbox, []
            cancels, self._cancels = self._cancels, []
            stopping = self._stopping
        aborts = [t for t in cancels if t.request_id is not None and not t.closed]
        tick = Tick([t.request_id for t in aborts if t.request_id is not None], [(t.prompt, t.params) for t in adds],
                    stop=stopping)
        tick.step = not stopping and (engine.has_unfinished or bool(adds))
        if self.leader is not None:
            publish(self.leader, tick)
        results = apply(engine, tick)
        for ticket in aborts:
            self._tickets.pop(ticket.request_id, None)  # type: ignore[arg-type]
            self._close(ticket, None, "cancelled")
        for ticket, result in zip(adds, results, strict=True):
            if isinstance(result, MistralrsError):
                self._close(ticket, engine_refusal(result, "prompt"), "error")
            else:
                ticket.request_id = result
                self._tickets[result] = ticket
                ticket.put(Accepted(len(ticket.prompt)))
        if stopping:
            for request_id, ticket in self._tickets.items():
                engine.abort(request_id)
                self._close(ticket, ApiError(503, "the server shut down before this request finished: send it "
                                                  "again", code="shutdown"), "cancelled")
            self._tickets.clear()
            self._publish_state()
            return False
        if tick.step:
            self._step(engine)
        self._publish_state()
        return True

    def _step(self, engine: Engine) -> None:
        try:
            outputs = engine.step()
        except CollectiveError:
            raise
        except Exception as exc:  # noqa: BLE001 - fails the requests of this step, which the engine dropped
            alive = set(engine.running) | set(engine.waiting)
            for request_id in [i for i in self._tickets if i not in alive]:
                self._close(self._tickets.pop(request_id), ApiError(
                    500, f"generation failed inside the engine ({type(exc).__name__}: {exc}); the server goes on: "
                         "send the request again, and report this if it repeats", code="engine_error"), "error")
            return
        now = time.perf_counter()
        for output in outputs:
            ticket = self._tickets.get(output.request_id)
            if ticket is None:
                continue
            self._observe(ticket, output, now)
            if output.finished:
                del self._tickets[output.request_id]
                self._close(ticket, output, str(output.finish_reason))
            else:
                ticket.put(output)

    def _observe(self, ticket: Ticket, output: RequestOutput, now: float) -> None:
        if output.token is None:
            return
        first = ticket.last_token is None
        self._metrics.token(first_after=now - ticket.arrived if first else None,
                            since_previous=None if first else now - ticket.last_token)  # type: ignore[operator]
        ticket.last_token = now

    def _close(self, ticket: Ticket, last: Any, outcome: str) -> None:
        ticket.closed = True
        if last is not None:
            ticket.put(last)
        self._metrics.finished(outcome)

    def _publish_state(self) -> None:
        engine = self.engine
        if engine is None:
            return
        with self._cv:
            queued = len(self._inbox)
        self._metrics.set_state(running=len(engine.running), waiting=len(engine.waiting) + queued,
                                blocks_used=engine.cache.used_blocks, blocks_free=engine.cache.free_blocks)
