"""The lifecycle and the gatekeeper middleware, on a stub app (no engine)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client import CollectorRegistry

from nim_runtime.app import create_app, with_request_bodies
from nim_runtime.config import RuntimeConfig
from nim_runtime.context import RuntimeContext
from nim_runtime.lifecycle import READY_MESSAGES, Lifecycle, Phase, admits
from nim_runtime.metrics import RuntimeMetrics
from nim_runtime.middleware import QUEUE_FULL_RETRY_AFTER
from nim_runtime.plan import make_plan


async def test_wait_idle_waits_for_the_last_request() -> None:
    lifecycle = Lifecycle()
    lifecycle.request_started()
    assert not await lifecycle.wait_idle(0.05)
    asyncio.get_running_loop().call_later(0.05, lifecycle.request_finished)
    assert await lifecycle.wait_idle(1)


def test_phases() -> None:
    lifecycle = Lifecycle()
    assert lifecycle.phase is Phase.LOADING
    assert not lifecycle.accepting
    lifecycle.mark_ready()
    assert lifecycle.accepting
    assert lifecycle.start_draining()
    assert not lifecycle.start_draining()
    assert not lifecycle.accepting


@pytest.fixture
def ctx() -> RuntimeContext:
    config = RuntimeConfig(profile="vllm-cpu-bf16", api_key="k", max_request_bytes=2048)
    return RuntimeContext(config=config, plan=make_plan(config), metrics=RuntimeMetrics(CollectorRegistry()))


async def test_probes_while_loading_and_draining(ctx: RuntimeContext) -> None:
    transport = httpx.ASGITransport(app=create_app(ctx))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/v1/health/live")).status_code == 200
        ready = await client.get("/v1/health/ready")
        assert ready.status_code == 503
        assert ready.json()["object"] == "health.response"
        loading = await client.post("/v1/completions", json={}, headers={"authorization": "Bearer k"})
        assert loading.status_code == 503
        assert loading.headers["retry-after"] == "5"
        assert (await client.post("/v1/completions", json={})).status_code == 401
        big = await client.post("/tokenize", content=b"x" * 4096, headers={"authorization": "Bearer k"})
        assert big.status_code == 413
        ctx.lifecycle.mark_ready()
        assert (await client.get("/v1/health/ready")).status_code == 200
        ctx.lifecycle.start_draining()
        assert (await client.get("/v1/health/ready")).status_code == 503
        refused = await client.post("/v1/chat/completions", json={}, headers={"authorization": "Bearer k"})
        assert refused.status_code == 503
        assert refused.json()["error"]["type"] == "ServiceUnavailableError"
        metrics = (await client.get("/v1/metrics")).text
        assert 'nim_runtime_requests_total{method="POST",route="/v1/chat/completions",status="503"} 1.0' in metrics
        assert (await client.get("/v1/manifest")).json()["name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


async def test_draining_serves_connections_opened_before_it_and_closes_them(ctx: RuntimeContext) -> None:
    ctx.lifecycle.mark_ready()
    pooled = httpx.ASGITransport(app=create_app(ctx), client=("10.245.0.7", 40000))
    late = httpx.ASGITransport(app=create_app(ctx), client=("10.245.0.7", 40001))
    ctx.lifecycle.start_draining([("10.245.0.7", 40000)])
    auth = {"authorization": "Bearer k"}
    async with httpx.AsyncClient(transport=pooled, base_url="http://t") as client:
        # Past the drain gate: no engine here, so the route itself answers, but not with the drain's refusal.
        kept = await client.post("/v1/chat/completions", json={}, headers=auth)
        assert "shutting down" not in kept.json()["error"]["message"], kept.text
        assert kept.headers["connection"] == "close"
        probe = await client.get("/v1/health/ready")
        assert probe.status_code == 503
        assert probe.headers["connection"] == "close"
    async with httpx.AsyncClient(transport=late, base_url="http://t") as client:
        refused = await client.post("/v1/chat/completions", json={}, headers=auth)
        assert refused.status_code == 503
        assert refused.json()["error"]["type"] == "ServiceUnavailableError"


@pytest.mark.parametrize(
    ("in_flight", "limit", "admitted"),
    [(0, 0, True), (10_000, 0, True), (0, 1, True), (1, 1, False), (3, 4, True), (4, 4, False), (5, 4, False)],
)
def test_admission_limit(in_flight: int, limit: int, admitted: bool) -> None:
    assert admits(in_flight, limit) is admitted


def test_a_refused_request_is_not_counted() -> None:
    lifecycle = Lifecycle()
    assert lifecycle.try_request_started(2)
    assert lifecycle.try_request_started(2)
    assert not lifecycle.try_request_started(2)
    assert lifecycle.in_flight == 2
    lifecycle.request_finished()
    assert lifecycle.try_request_started(2)
    assert lifecycle.in_flight == 2


async def test_a_full_server_answers_429_with_retry_after() -> None:
    """Requests beyond NIM_MAX_QUEUED_REQUESTS are refused up front; the slots free up as answers finish."""
    config = RuntimeConfig(profile="vllm-cpu-bf16", max_queued_requests=2)
    ctx = RuntimeContext(config=config, plan=make_plan(config), metrics=RuntimeMetrics(CollectorRegistry()))
    ctx.lifecycle.mark_ready()
    ctx.lifecycle.request_started()
    ctx.lifecycle.request_started()  # two requests held by the engine
    transport = httpx.ASGITransport(app=create_app(ctx))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        refused = await client.post("/v1/completions", json={"model": "m", "prompt": "x"})
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == QUEUE_FULL_RETRY_AFTER
        error = refused.json()["error"]
        assert error["type"] == "RateLimitError"
        assert "NIM_MAX_QUEUED_REQUESTS" in error["message"]
        assert (await client.get("/v1/health/ready")).status_code == 200  # probes are never refused
        assert ctx.lifecycle.in_flight == 2
        ctx.lifecycle.request_finished()
        admitted = await client.post("/v1/completions", json={"model": "m", "prompt": "x"})
        assert admitted.status_code == 503  # past the gate; no engine in this test
        assert ctx.lifecycle.in_flight == 1


def test_openapi_gets_request_bodies_without_touching_other_routes() -> None:
    base = {"paths": {"/tokenize": {"post": {"summary": "t"}}, "/v1/health/live": {"get": {}}}}
    bodies = {"/tokenize": {"$ref": "#/components/schemas/Tok"}, "/v1/embeddings": {"type": "object"}}
    result = with_request_bodies(base, bodies, {"Tok": {"type": "object"}})
    body = result["paths"]["/tokenize"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Tok"}
    assert result["components"]["schemas"] == {"Tok": {"type": "object"}}
    assert "/v1/embeddings" not in result["paths"]  # a route the app lacks is not invented
    assert "requestBody" not in base["paths"]["/tokenize"]["post"]  # the input is left alone


async def test_a_dead_engine_fails_both_probes_and_refuses_requests(ctx: RuntimeContext) -> None:
    dead = False
    ctx.lifecycle.watch_engine(lambda: dead)
    ctx.lifecycle.mark_ready()
    transport = httpx.ASGITransport(app=create_app(ctx))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/v1/health/ready")).status_code == 200
        assert (await client.get("/v1/health/live")).status_code == 200
        dead = True
        for path in ("/v1/health/ready", "/v1/health/live"):
            probe = await client.get(path)
            assert probe.status_code == 503, path
            assert probe.json() == {"object": "health.response", "message": READY_MESSAGES[Phase.ENGINE_DEAD]}
        refused = await client.post("/v1/chat/completions", json={}, headers={"authorization": "Bearer k"})
        assert refused.status_code == 503
        assert refused.json()["error"]["type"] == "ServiceUnavailableError"
        assert "engine died" in refused.json()["error"]["message"]
    assert ctx.lifecycle.phase is Phase.ENGINE_DEAD
    assert not ctx.lifecycle.start_draining()  # a SIGTERM now does not hide the death
    dead = False
    assert not ctx.lifecycle.engine_alive()  # for good
