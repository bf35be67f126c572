"""Zero dropped requests on rollout: SIGTERM under a load of streams.

Clients keep opening streams (one connection each, as behind a load balancer) while the server is told
to stop. Every stream the server accepted must end with ``[DONE]`` after all its tokens; every request
after the SIGTERM is refused cleanly (an OpenAI-shaped 503, or no connection once the process is gone);
none is cut mid-stream; the process exits 0.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.runtime.conftest import TINY, Server, metric, serving, start_tiny_server

pytestmark = pytest.mark.runtime

CLIENTS = 8
TOKENS = 200
#: Requests per client at most (a client stops at its first refusal); bounds the test if SIGTERM is ignored.
MAX_REQUESTS_PER_CLIENT = 40
PATIENCE = 180


@pytest.fixture
def rolling(runtime_tmp: Path, tiny_model: Path) -> Iterator[Server]:
    """A tiny-model server of its own: the test stops it."""
    with serving(start_tiny_server(runtime_tmp, "tiny-rollout", tiny_model, NIM_DRAIN_TIMEOUT=str(PATIENCE))) as server:
        yield server


def stream_once(url: str) -> str:
    """One streamed completion on a fresh connection: "completed", "refused" or what went wrong.

    A connection that fails before any response (refused, or closed unanswered as the server stops)
    is a clean refusal: the client saw nothing and can retry elsewhere. A failure after the 200 is a cut.
    """
    request = {
        "model": TINY, "prompt": "Once", "max_tokens": TOKENS, "ignore_eos": True, "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    accepted = False
    events: list[str] = []
    try:
        with httpx.stream("POST", f"{url}/v1/completions", json=request, timeout=PATIENCE) as response:
            if response.status_code == 503:
                error = json.loads(response.read())["error"]
                shaped = (error["type"], error["code"]) == ("ServiceUnavailableError", 503)
                return "refused" if shaped else f"malformed 503: {error!r}"
            if response.status_code != 200:
                return f"status {response.status_code}"
            accepted = True
            events = [line for line in response.iter_lines() if line.startswith("data: ")]
    except httpx.TransportError as exc:
        return f"cut after {len(events)} events: {exc!r}" if accepted else "refused"
    # Count tokens by the usage chunk: one text event may carry two tokens (held-back partial UTF-8).
    chunks = [json.loads(e.removeprefix("data: ")) for e in events if e != "data: [DONE]"]
    generated = next((c["usage"]["completion_tokens"] for c in reversed(chunks) if c.get("usage")), 0)
    finished = any(choice.get("finish_reason") == "length" for c in chunks for choice in c.get("choices", []))
    if events and events[-1] == "data: [DONE]" and finished and generated == TOKENS:
        return "completed"
    return f"truncated: {generated} of {TOKENS} tokens, last event {events[-1:]!r}"


def test_sigterm_under_load_drops_no_accepted_stream(rolling: Server) -> None:
    outcomes: list[tuple[float, str]] = []
    lock = threading.Lock()
    started = threading.Semaphore(0)

    def client() -> None:
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            started.release()
            outcome = stream_once(rolling.url)
            with lock:
                outcomes.append((time.monotonic(), outcome))
            if outcome != "completed":
                return

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for _ in range(CLIENTS):  # every client has a stream under way ...
        assert started.acquire(timeout=PATIENCE)
    deadline = time.monotonic() + PATIENCE  # ... and the engine is generating for them
    while metric(rolling, "vllm:num_requests_running") == 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1.0)
    signalled = time.monotonic()
    rolling.proc.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(PATIENCE)
    assert not any(thread.is_alive() for thread in threads)
    exit_code = rolling.proc.wait(PATIENCE)

    counts = Counter(outcome if outcome in ("completed", "refused") else "failed" for _, outcome in outcomes)
    after = sum(1 for at, outcome in outcomes if at > signalled and outcome == "completed")
    print(f"rollout: {dict(counts)}; completed after SIGTERM: {after}; exit code {exit_code}")
    failures = [outcome for _, outcome in outcomes if outcome not in ("completed", "refused")]
    assert not failures, failures
    assert after >= CLIENTS - 1  # the streams in flight at SIGTERM finished (one may have been between requests)
    assert counts["refused"] == CLIENTS  # every client's next request was refused
    assert exit_code == 0
