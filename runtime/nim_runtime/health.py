"""What the health probes answer, defined once for the two places that answer them.

``/v1/health/live`` and ``/v1/health/ready`` are answered by the probe door's thread (see
:mod:`nim_runtime.probe_door`), where streams keeping the event loop busy cannot delay them, and by the
app's routes (with TLS, where there is no door, and on a connection the door has handed to the event
loop). Both call :func:`health_answer`, which reads flags only (the lifecycle's phase and the engine
client's liveness flag), never waits on the engine or the event loop.
"""

from __future__ import annotations

from nim_runtime.lifecycle import READY_MESSAGES, Lifecycle, Phase

LIVE_PATH = "/v1/health/live"
READY_PATH = "/v1/health/ready"
PROBE_PATHS = frozenset({LIVE_PATH, READY_PATH})

LIVE_MESSAGE = "Service is live."
#: Seconds the event loop may go without turning before the probes say the server is not live. Answers
#: from another thread must not say "live" while the loop that serves everything else is wedged; the
#: loop turns ten times a second (uvicorn's tick), and blocking calls run off it, so 10 s means stuck.
LOOP_STALL_SECONDS = 10.0
LOOP_STALLED_MESSAGE = "Service is not responding: its event loop has not turned for {seconds:.0f} s."

HealthBody = dict[str, str]


def health_answer(path: str, lifecycle: Lifecycle, *, loop_stalled_for: float | None = None) -> tuple[int, HealthBody]:
    """Status and JSON body for a GET of ``path`` (one of PROBE_PATHS).

    live: 200 while the process serves (also while loading and draining), 503 once the engine died or
    the event loop has stalled (``loop_stalled_for``: seconds since it last turned, given only when that
    is too long). ready: 200 only when ready, 503 while loading, draining, after a failed load, once the
    engine died, or while the loop is stalled.
    """
    if loop_stalled_for is not None:
        return 503, _body(LOOP_STALLED_MESSAGE.format(seconds=loop_stalled_for))
    alive = lifecycle.engine_alive()  # the first check that sees a dead engine flips the phase
    if path == LIVE_PATH:
        return (200, _body(LIVE_MESSAGE)) if alive else (503, _body(READY_MESSAGES[Phase.ENGINE_DEAD]))
    status = 200 if alive and lifecycle.phase is Phase.READY else 503
    return status, _body(READY_MESSAGES[lifecycle.phase])


def _body(message: str) -> HealthBody:
    return {"object": "health.response", "message": message}
