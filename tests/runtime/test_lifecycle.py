"""Start-up failures, the API key and the graceful drain, on a tiny random model (fast to start)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.runtime.conftest import REPO, TINY, Server, serving, start_tiny_server

pytestmark = pytest.mark.runtime

KEY = "test-key-123"


def test_unknown_profile_exits_at_once_listing_valid_ones() -> None:
    env = {**os.environ, "NIM_MODEL_PROFILE": "vllm-fp3-tp9"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "nim_runtime"], env=env, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert "vllm-fp3-tp9" in result.stderr
    assert "vllm-cpu-bf16" in result.stderr
    assert time.monotonic() - started < 30


@pytest.fixture(scope="module")
def tiny(runtime_tmp: Path, tiny_model: Path) -> Iterator[Server]:
    with serving(start_tiny_server(runtime_tmp, "tiny", tiny_model, NIM_API_KEY=KEY, NIM_DRAIN_TIMEOUT="60")) as server:
        yield server


def auth(key: str = KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_api_key_guards_inference_but_not_probes(tiny: Server) -> None:
    request = {"model": TINY, "prompt": "hello", "max_tokens": 2}
    missing = httpx.post(f"{tiny.url}/v1/completions", json=request)
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "AuthenticationError"
    assert httpx.post(f"{tiny.url}/v1/completions", json=request, headers=auth("wrong")).status_code == 401
    assert httpx.get(f"{tiny.url}/v1/models").status_code == 401
    assert httpx.post(f"{tiny.url}/v1/completions", json=request, headers=auth()).status_code == 200
    for path in ("/v1/health/live", "/v1/health/ready", "/v1/metrics", "/v1/metadata"):
        assert httpx.get(tiny.url + path).status_code == 200, path


def test_custom_model_path_is_served_under_its_name(tiny: Server) -> None:
    card = httpx.get(f"{tiny.url}/v1/models", headers=auth()).json()["data"][0]
    assert card["id"] == TINY
    assert card["max_model_len"] == 1024
    assert httpx.get(f"{tiny.url}/v1/metadata").json()["profile"]["id"] == "vllm-cpu-auto"


def test_sigterm_drains_in_flight_stream_then_exits_0(tiny: Server) -> None:
    """Runs last in this module: it stops the server."""
    request = {"model": TINY, "prompt": "Once", "max_tokens": 600, "stream": True, "ignore_eos": True}
    chunks: list[str] = []
    first_chunk = threading.Event()

    def consume() -> None:
        with httpx.stream("POST", f"{tiny.url}/v1/completions", json=request, headers=auth(), timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    chunks.append(line)
                    first_chunk.set()

    reader = threading.Thread(target=consume)
    reader.start()
    assert first_chunk.wait(60)
    # A client with a pooled keep-alive connection, opened before the SIGTERM (as a Service's client
    # whose connection still leads to this pod after its endpoints are gone).
    pooled = httpx.Client(base_url=tiny.url, headers=auth(), timeout=60)
    assert pooled.get("/v1/metadata").status_code == 200
    tiny.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    if tiny.proc.poll() is None:
        kept = pooled.post("/v1/completions", json={**request, "stream": False, "max_tokens": 4})
        assert kept.status_code == 200, kept.text  # served, not refused ...
        assert kept.headers["connection"] == "close"  # ... and its connection ends with the answer
        pooled.close()
        ready = httpx.get(f"{tiny.url}/v1/health/ready")
        assert ready.status_code == 503
        assert ready.json()["object"] == "health.response"
        try:
            refused = httpx.post(f"{tiny.url}/v1/completions", json={**request, "stream": False}, headers=auth())
            assert refused.status_code == 503
            assert refused.json()["error"]["type"] == "ServiceUnavailableError"
        except httpx.TransportError:
            pass  # already closed: refused as well
    reader.join(120)
    assert chunks[-1] == "data: [DONE]"
    assert sum('"text"' in c for c in chunks) >= 500
    assert tiny.proc.wait(60) == 0
