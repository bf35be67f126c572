"""The server's phase (loading -> ready -> draining, or failed) and its in-flight inference requests.

Health endpoints read the phase without touching the engine, so they answer in microseconds even when
the engine is saturated. Drain waits on the in-flight count, which the middleware keeps for the whole
life of a response (a stream counts until its last byte is sent). The same count bounds admission:
beyond ``NIM_MAX_QUEUED_REQUESTS`` a request is refused before it reaches the engine, whose own queue
has no bound.
"""

from __future__ import annotations

import asyncio
import enum
import time


class Phase(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


#: What /v1/health/ready says in each phase.
READY_MESSAGES: dict[Phase, str] = {
    Phase.LOADING: "Service is starting: the model is loading.",
    Phase.READY: "Service is ready.",
    Phase.DRAINING: "Service is shutting down: finishing in-flight requests.",
    Phase.FAILED: "Service failed to load the model; see the server log.",
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
        if self.phase is not Phase.DRAINING:
            self.phase = Phase.FAILED
        self.failure = reason

    def start_draining(self) -> bool:
        """Stop accepting; False when already draining (a second SIGTERM changes nothing)."""
        if self.phase is Phase.DRAINING:
            return False
        self.phase = Phase.DRAINING
        return True

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
