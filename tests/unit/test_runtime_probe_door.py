"""The probe door: which requests it answers, and the real server (uvicorn, our app, real sockets, no
engine) answering probes while its event loop is held busy, which a probe served by the loop cannot."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvloop
from prometheus_client import CollectorRegistry
from starlette.responses import JSONResponse

from nim_runtime.app import create_app
from nim_runtime.config import RuntimeConfig
from nim_runtime.context import RuntimeContext
from nim_runtime.health import LIVE_PATH, READY_PATH, health_answer
from nim_runtime.lifecycle import READY_MESSAGES, Phase
from nim_runtime.metrics import RuntimeMetrics
from nim_runtime.plan import make_plan
from nim_runtime.probe_door import MAX_HEAD_BYTES, Probe, Verdict, classify, render
from nim_runtime.server import DrainingServer, make_server
from tests.conftest import free_port

#: Seconds the tests keep the event loop busy running Python (as streams' chunk writing does).
HOLD_SECONDS = 3.0


@pytest.mark.parametrize(
    ("head", "path", "close"),
    [
        (b"GET /v1/health/ready HTTP/1.1\r\nHost: x\r\n\r\n", READY_PATH, False),
        (b"GET /v1/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", LIVE_PATH, True),
        (b"GET /v1/health/live?x=1 HTTP/1.0\r\n\r\n", LIVE_PATH, True),
        (b"GET /v1/health/live HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", LIVE_PATH, False),
        (
            b"GET /v1/health/ready HTTP/1.1\r\nContent-Length: 0\r\nUser-Agent: kube-probe/1.35\r\n\r\n",
            READY_PATH,
            False,
        ),
    ],
)
def test_probes_are_recognised(head: bytes, path: str, close: bool) -> None:
    assert classify(head + b"GET /next") == Probe(path=path, close=close, length=len(head))


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"GET /v1/hea", Verdict.NEED_MORE),
        (b"GET /v1/health/ready HTTP/1.1\r\nHost: x\r\n", Verdict.NEED_MORE),
        (b"POST /v1/chat/completions HTTP/1.1\r\n", Verdict.HAND_OFF),
        (b"P", Verdict.HAND_OFF),
        (b"HEAD /v1/health/ready HTTP/1.1\r\n\r\n", Verdict.HAND_OFF),
        (b"GET /v1/health/other HTTP/1.1\r\n\r\n", Verdict.HAND_OFF),
        (b"GET /v1/health/ready HTTP/2.0\r\n\r\n", Verdict.HAND_OFF),
        (b"GET /v1/health/ready HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi", Verdict.HAND_OFF),
        (b"GET /v1/health/ready HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", Verdict.HAND_OFF),
        (b"GET /v1/health/ready HTTP/1.1\r\nOrigin: http://a\r\n\r\n", Verdict.HAND_OFF),
        (b"GET /v1/health/ready HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", Verdict.HAND_OFF),
        (b"GET /v1/health/ready HTTP/1.1\r\nHost : x\r\n\r\n", Verdict.HAND_OFF),
        (b"GET /v1/health/ready HTTP/1.1\r\nbroken\r\n\r\n", Verdict.HAND_OFF),
        (b"GET /v1/health/ready HTTP/1.1\r\nX: " + b"y" * MAX_HEAD_BYTES, Verdict.HAND_OFF),
    ],
)
def test_everything_else_waits_or_goes_to_the_app(head: bytes, expected: Verdict) -> None:
    assert classify(head) is expected


def test_answers_carry_the_routes_json() -> None:
    body = {"object": "health.response", "message": "Service is ready."}
    answer = render(200, body, close=True)
    head, payload = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nconnection: close" in head
    assert f"content-length: {len(payload)}".encode() in head
    assert payload == JSONResponse(body).body


@dataclass
class Running:
    server: DrainingServer
    ctx: RuntimeContext
    loop: asyncio.AbstractEventLoop
    port: int

    def hold_loop(self, seconds: float) -> tuple[threading.Event, list[float]]:
        """Keep the event loop running Python for ``seconds``; the event is set once it started, the list
        gets the moment it ended."""
        started, ended = threading.Event(), []

        def hold() -> None:
            started.set()
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                pass
            ended.append(time.monotonic())

        self.loop.call_soon_threadsafe(hold)
        assert started.wait(10)
        return started, ended

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[http.client.HTTPResponse, bytes]:
        """A GET on a new connection (as the kubelet probes)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("GET", path, headers=headers or {})
            response = connection.getresponse()
            return response, response.read()
        finally:
            connection.close()


@pytest.fixture
def running() -> Iterator[Running]:
    """Our server (app, middleware, uvicorn, probe door) on a thread of its own, with no engine."""
    config = RuntimeConfig(profile="vllm-cpu-bf16", host="127.0.0.1", port=free_port())
    ctx = RuntimeContext(config=config, plan=make_plan(config), metrics=RuntimeMetrics(CollectorRegistry()))
    interval = sys.getswitchinterval()
    server = make_server(ctx, create_app(ctx))
    loops: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        loops.append(asyncio.get_running_loop())
        await server.serve()

    thread = threading.Thread(target=uvloop.run, args=(main(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    try:
        yield Running(server=server, ctx=ctx, loop=loops[0], port=config.port)
    finally:
        server.should_exit = True
        thread.join(15)
        sys.setswitchinterval(interval)


def test_probes_are_answered_while_the_event_loop_is_held(running: Running) -> None:
    running.ctx.lifecycle.mark_ready()
    kept = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
    kept.request("GET", READY_PATH)  # a keep-alive probe connection, opened before the hold
    assert kept.getresponse().read()
    answered_at: list[float] = []

    def version() -> None:
        response, _ = running.get("/v1/version")
        assert response.status == 200
        answered_at.append(time.monotonic())

    _, ended = running.hold_loop(HOLD_SECONDS)
    loop_request = threading.Thread(target=version)
    loop_request.start()
    probes = []
    for path in (READY_PATH, LIVE_PATH):
        sent = time.monotonic()
        response, body = running.get(path)
        probes.append((path, response.status, json.loads(body), time.monotonic() - sent))
        kept.request("GET", path)
        kept_answer = kept.getresponse()
        assert (kept_answer.status, json.loads(kept_answer.read())["object"]) == (200, "health.response")
    probed_at = time.monotonic()
    loop_request.join(30)
    kept.close()
    print(
        f"probes during a {HOLD_SECONDS:.0f} s hold: "
        + ", ".join(f"{p} {s} {t * 1000:.1f} ms" for p, s, _, t in probes)
    )
    assert [(p, s, b) for p, s, b, _ in probes] == [
        (READY_PATH, 200, {"object": "health.response", "message": "Service is ready."}),
        (LIVE_PATH, 200, {"object": "health.response", "message": "Service is live."}),
    ]
    assert ended, "the hold did not end"
    assert probed_at < ended[0], "the probes waited for the event loop"
    assert answered_at, "/v1/version was not answered"
    assert answered_at[0] >= ended[0], "/v1/version did not go through the event loop"


def test_answers_follow_the_lifecycle(running: Running) -> None:
    lifecycle = running.ctx.lifecycle
    for path in (LIVE_PATH, READY_PATH):
        response, body = running.get(path)
        assert (response.status, json.loads(body)) == health_answer(path, lifecycle)
    assert running.get(READY_PATH)[0].status == 503  # loading
    lifecycle.mark_ready()
    assert running.get(READY_PATH)[0].status == 200
    lifecycle.start_draining()
    response, body = running.get(READY_PATH)
    assert (response.status, json.loads(body)["message"]) == (503, READY_MESSAGES[Phase.DRAINING])
    assert response.getheader("connection") == "close"
    assert running.get(LIVE_PATH)[0].status == 200
    lifecycle.watch_engine(lambda: True)
    for path in (LIVE_PATH, READY_PATH):
        response, body = running.get(path)
        assert (response.status, json.loads(body)["message"]) == (503, READY_MESSAGES[Phase.ENGINE_DEAD])


def test_a_stalled_event_loop_fails_both_probes(running: Running) -> None:
    running.ctx.lifecycle.mark_ready()
    door = running.server.door
    assert door is not None
    door.stall_seconds = 1.0
    _, ended = running.hold_loop(HOLD_SECONDS)
    time.sleep(1.5)
    for path in (LIVE_PATH, READY_PATH):
        response, body = running.get(path)
        assert response.status == 503
        assert "event loop has not turned" in json.loads(body)["message"]
    while not ended:
        time.sleep(0.05)
    time.sleep(0.3)  # a tick of uvicorn's main loop
    assert running.get(LIVE_PATH)[0].status == 200


def _responses(sock: socket.socket, count: int) -> list[tuple[bytes, bytes]]:
    """``count`` (head, body) pairs read from ``sock`` (bodies sized by Content-Length)."""
    buffer, answers = b"", []
    while len(answers) < count:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            head = buffer[:end]
            length = int(
                next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
            )
            if len(buffer) >= end + 4 + length:
                answers.append((head, buffer[end + 4 : end + 4 + length]))
                buffer = buffer[end + 4 + length :]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(answers)} answers"
        buffer += chunk
    return answers


def test_other_requests_reach_the_app_with_every_byte(running: Running) -> None:
    running.ctx.lifecycle.mark_ready()
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        # A probe, then a request for the app, pipelined in one packet: the door answers the first and hands
        # the connection to uvicorn (its answers say "server: uvicorn") with the second already read.
        probe = b"GET /v1/health/ready HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(probe + b"GET /v1/version HTTP/1.1\r\nHost: x\r\n\r\n")
        (door_head, door_body), (app_head, app_body) = _responses(sock, 2)
        assert b"server: uvicorn" not in door_head
        assert json.loads(door_body)["message"] == "Service is ready."
        assert b"server: uvicorn" in app_head
        assert json.loads(app_body)["api"]
        sock.sendall(probe)  # the connection is the app's now
        ((head, body),) = _responses(sock, 1)
        assert b"server: uvicorn" in head
        assert json.loads(body)["object"] == "health.response"
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        request = (
            b'POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{"a": 1'
        )
        for i in range(len(request)):  # byte by byte: the door sees a prefix that could have been a probe
            sock.sendall(request[i : i + 1])
        ((head, body),) = _responses(sock, 1)
        assert head.startswith(b"HTTP/1.1 400")
        assert "not valid JSON" in json.loads(body)["error"]["message"]
    response, body = running.get(READY_PATH, headers={"Origin": "http://elsewhere"})
    assert response.getheader("server") == "uvicorn"
    assert response.status == 200


def test_probes_are_counted_and_their_connections_kept_for_the_drain(running: Running) -> None:
    for _ in range(3):
        running.get(READY_PATH)
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(b"GET /v1/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        _responses(sock, 1)
        door = running.server.door
        assert door is not None
        assert sock.getsockname() in door.clients()
    registry = running.ctx.metrics.registry
    labels = {"route": READY_PATH, "method": "GET", "status": "503"}
    assert registry.get_sample_value("nim_runtime_requests_total", labels) == 3


def test_a_taken_port_is_an_error(running: Running) -> None:
    config = RuntimeConfig(profile="vllm-cpu-bf16", host="127.0.0.1", port=running.port)
    ctx = RuntimeContext(config=config, plan=make_plan(config), metrics=RuntimeMetrics(CollectorRegistry()))
    with pytest.raises(OSError, match="in use"):
        make_server(ctx, create_app(ctx))
