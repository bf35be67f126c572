"""Health probes under 32 streams on real vLLM: answered by the probe door, not queued behind the streams.

Before the door, a probe waited for the event loop, which writes 32 streams' chunks after every engine
step (p99 13.8 ms under 32 streams; the benchmark measures the latency, this test does not). Here every
probe sent while the streams run, on a new connection as the kubelet sends them and on a kept-alive one,
must answer 200 with its JSON body, and must come from the door: uvicorn stamps every answer that went
through the event loop with ``server: uvicorn``, the door does not. That the door answers while the loop
is held busy is shown in tests/unit/test_runtime_probe_door.py. The streams, which all reach the event
loop through the door's hand-off, must all complete with every token.
"""

from __future__ import annotations

import http.client
import json
import threading
import time

import httpx
import pytest

from tests.runtime.conftest import SMOLLM2, Server

pytestmark = pytest.mark.runtime

STREAMS = 32
TOKENS = 48
#: Seconds a probe may take before the test calls it starved: far beyond any CPU scheduling delay, far
#: below what a probe queued behind the streams took on an overloaded machine (over 400 ms).
GENEROUS_SECONDS = 1.0
EXPECTED = {
    "/v1/health/ready": {"object": "health.response", "message": "Service is ready."},
    "/v1/health/live": {"object": "health.response", "message": "Service is live."},
}


def stream_tokens(url: str, index: int) -> int:
    """One streamed chat completion on a connection of its own; the completion tokens it reported."""
    body = {
        "model": SMOLLM2, "messages": [{"role": "user", "content": f"Count to {index}."}], "max_tokens": TOKENS,
        "ignore_eos": True, "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    tokens = 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: {") and (usage := json.loads(line[6:]).get("usage")):
                tokens = usage["completion_tokens"]
    return tokens


def probe(connection: http.client.HTTPConnection, path: str) -> tuple[int, dict[str, str], str | None, float]:
    started = time.monotonic()
    connection.request("GET", path)
    response = connection.getresponse()
    body = json.loads(response.read())
    return response.status, body, response.getheader("server"), time.monotonic() - started


def test_probes_under_32_streams_come_from_the_door(smollm2: Server) -> None:
    port = smollm2.port
    tokens: list[int] = []
    streams = [
        threading.Thread(target=lambda i=i: tokens.append(stream_tokens(smollm2.url, i))) for i in range(STREAMS)
    ]
    for thread in streams:
        thread.start()
    answers = []
    kept = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        time.sleep(1.0)  # every stream under way
        while any(thread.is_alive() for thread in streams):
            for path in EXPECTED:
                fresh = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                try:
                    answers.append((path, "new connection", *probe(fresh, path)))
                finally:
                    fresh.close()
                answers.append((path, "kept alive", *probe(kept, path)))
            time.sleep(0.05)
    finally:
        kept.close()
        for thread in streams:
            thread.join(300)
    slowest = max(answers, key=lambda answer: answer[-1])
    print(f"{len(answers)} probes under {STREAMS} streams; slowest {slowest[-1] * 1000:.1f} ms ({slowest[:2]})")
    assert len(answers) >= 20, "the streams ended before the probes could see them"
    assert tokens == [TOKENS] * STREAMS
    for path, how, status, body, server, seconds in answers:
        assert (status, body) == (200, EXPECTED[path]), (path, how)
        assert server is None, f"{path} on a {how} was answered through the event loop ({server})"
        assert seconds < GENEROUS_SECONDS, f"{path} on a {how} took {seconds:.2f} s"
