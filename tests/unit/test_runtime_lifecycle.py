"""The lifecycle and the gatekeeper middleware, on a stub app (no engine)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client import CollectorRegistry

from nim_runtime.app import create_app
from nim_runtime.config import RuntimeConfig
from nim_runtime.context import RuntimeContext
from nim_runtime.lifecycle import Lifecycle, Phase
from nim_runtime.metrics import RuntimeMetrics
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
