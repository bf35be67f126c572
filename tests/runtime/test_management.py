"""NIM management endpoints and the Llama Stack chat endpoint on the embedded SmolLM2."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.runtime.conftest import SMOLLM2, Server

pytestmark = pytest.mark.runtime


def test_metrics_carry_vllm_and_runtime_series(smollm2: Server) -> None:
    httpx.post(f"{smollm2.url}/v1/completions", json={"model": SMOLLM2, "prompt": "Hi", "max_tokens": 1})
    text = httpx.get(f"{smollm2.url}/v1/metrics").text
    for name in ("vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "nim_runtime_queue_depth",
                 "nim_runtime_kv_cache_usage_ratio", "nim_runtime_request_duration_seconds_bucket",
                 "nim_runtime_inference_requests_in_flight", "nim_runtime_ready 1.0"):  # fmt: skip
        assert name in text, name
    assert 'nim_runtime_requests_total{method="POST",route="/v1/completions",status="200"}' in text


def test_version_metadata_manifest_license(smollm2: Server) -> None:
    version = httpx.get(f"{smollm2.url}/v1/version").json()
    assert version["vllm"] == "0.32.0"
    assert version["api"]
    metadata = httpx.get(f"{smollm2.url}/v1/metadata").json()
    assert metadata["profile"]["id"] == "vllm-cpu-bf16"
    assert metadata["profile"]["tags"]["device"] == "cpu"
    assert metadata["modelInfo"][0]["shortName"] == SMOLLM2
    manifest = httpx.get(f"{smollm2.url}/v1/manifest").json()
    assert manifest["name"] == SMOLLM2
    assert "vllm-cpu-bf16" in [p["id"] for p in manifest["profiles"]]
    assert httpx.get(f"{smollm2.url}/v1/license").json()["name"] == "apache-2.0"


@pytest.mark.parametrize("path", ["/inference/chat_completion", "/ls/inference/chat_completion"])
def test_llama_stack_chat(smollm2: Server, path: str) -> None:
    request = {
        "model_id": SMOLLM2,
        "messages": [{"role": "user", "content": ["What is the capital of France?", {"text": "Answer briefly."}]}],
        "sampling_params": {"strategy": {"type": "greedy"}, "max_tokens": 8},
    }
    body = httpx.post(smollm2.url + path, json=request, timeout=60).json()
    message = body["completion_message"]
    assert message["role"] == "assistant"
    assert message["content"]
    assert message["stop_reason"] in ("end_of_turn", "out_of_tokens")
    assert message["tool_calls"] == []
    assert body["logprobs"] is None


def test_llama_stack_streaming(smollm2: Server) -> None:
    request = {"model": SMOLLM2, "messages": [{"role": "user", "content": "Hi"}], "stream": True,
               "sampling_params": {"max_tokens": 5}}  # fmt: skip
    with httpx.stream("POST", f"{smollm2.url}/inference/chat_completion", json=request, timeout=60) as response:
        events = [json.loads(line[6:])["event"] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[0]["event_type"] == "start"
    assert events[-1]["event_type"] == "complete"
    assert any(e["event_type"] == "progress" for e in events)
    assert events[-1]["stop_reason"] in ("end_of_turn", "out_of_tokens")


def test_llama_stack_image_to_text_only_model_is_400(smollm2: Server) -> None:
    request = {"model": SMOLLM2, "messages": [{"role": "user", "content": [
        {"image": {"uri": "https://example.com/boardwalk.jpg"}}, "What is in this image?"]}]}  # fmt: skip
    response = httpx.post(f"{smollm2.url}/ls/inference/chat_completion", json=request)
    assert response.status_code == 400
    assert "text-only" in response.json()["error"]["message"]
