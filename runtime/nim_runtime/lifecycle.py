"""The server's phase (loading -> ready -> draining, or failed, or engine-dead) and its in-flight requests.

Health endpoints read the phase plus one flag the engine client keeps (whether its engine core process
is still alive), never a round trip to the engine, so they answer in microseconds even when the engine is
saturated. Drain waits on the in-flight count, which the middleware keeps for the whole
life of a response (a stream counts until its last byte is sent). The same count bounds admission:
beyond ``NIM_MAX_QUEUED_REQUESTS`` a request is refused before it reaches the engine, whose own queue
has no bound.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Iterable


class Phase(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"
    #: The engine core process died (or hung: no heartbeat answer) after loading; the process exits non-zero.
    ENGINE_DEAD = "engine-dead"


#: What /v1/health/ready says in each phase.
READY_MESSAGES: dict[Phase, str] = {
    Phase.LOADING: "Service is starting: the model is loading.",
    Phase.READY: "Service is ready.",
    Phase.DRAINING: "Service is shutting down: finishing in-flight requests.",
    Phase.FAILED: "Service failed to load the model; see the server log.",
    Phase.ENGINE_DEAD: "Service is unavailable: the inference engine died or hung; the server is exiting.",
}


class Lifecycle:
    """Shared by the app, the loader and the signal handling; one per process."""

    def __init__(self) -> None:
        self.phase = Phase.LOADING
        self.started_at = time.monotonic()
        self.ready_at: float | None = None
        self.failure: str | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._engine_dead: Callable[[], bool] | None = None
        self._kept_connections: frozenset[tuple[str, int]] = frozenset()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def accepting(self) -> bool:
        """Whether new inference requests may start."""
        return self.phase is Phase.READY

    def mark_ready(self) -> None:
        if self.phase is Phase.LOADING:
            self.phase = Phase.READY
            self.ready_at = time.monotonic()

    def mark_failed(self, reason: str) -> None:
        if self.phase not in (Phase.DRAINING, Phase.ENGINE_DEAD):
            self.phase = Phase.FAILED
        self.failure = reason

    def watch_engine(self, is_dead: Callable[[], bool]) -> None:
        """Have :meth:`engine_alive` ask ``is_dead`` (a cheap flag read, not a call into the engine)."""
        self._engine_dead = is_dead

    def engine_alive(self) -> bool:
        """False once the watched engine has died; the first check that sees it flips the phase for good."""
        if self.phase is Phase.ENGINE_DEAD:
            return False
        if self._engine_dead is not None and self._engine_dead():
            self.phase = Phase.ENGINE_DEAD
            return False
        return True

    def start_draining(self, open_connections: Iterable[tuple[str, int]] = ()) -> bool:
        """Stop accepting; False when already draining or the engine is dead (nothing left to drain).

        ``open_connections`` are the client addresses of the connections open at this moment. Behind a
        Service, the pod left the endpoints before its SIGTERM (the preStop pause), so new connections no
        longer arrive, but a client's pooled keep-alive connection still leads here: its requests are
        served (each answer closing the connection, so the client reconnects to another pod) instead of
        refused. Requests on connections opened after this moment are refused: they come from routing
        that has not caught up and do better retried elsewhere.
        """
        if self.phase in (Phase.DRAINING, Phase.ENGINE_DEAD):
            return False
        self.phase = Phase.DRAINING
        self._kept_connections = frozenset(open_connections)
        return True

    def serves_while_draining(self, client: tuple[str, int] | None) -> bool:
        """Whether a request from ``client`` is served during the drain (see :meth:`start_draining`)."""
        return self.phase is Phase.DRAINING and client is not None and tuple(client) in self._kept_connections

    def request_started(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    def try_request_started(self, limit: int) -> bool:
        """Count a request in unless ``limit`` requests are already in flight (0: no limit).

        Check and increment happen without an ``await`` in between, so on the one event loop two
        requests can never both take the last slot.
        """
        if not admits(self._in_flight, limit):
            return False
        self.request_started()
        return True

    def request_finished(self) -> None:
        self._in_flight -= 1
        if self._in_flight <= 0:
            self._in_flight = 0
            self._idle.set()

    async def wait_idle(self, seconds: float) -> bool:
        """Wait until no inference request is in flight; False when the timeout came first."""
        try:
            await asyncio.wait_for(self._idle.wait(), seconds)
        except TimeoutError:
            return False
        return True


def admits(in_flight: int, limit: int) -> bool:
    """Whether one more request fits beside ``in_flight`` others under ``limit`` (0 or less: unbounded)."""
    return limit <= 0 or in_flight < limit
