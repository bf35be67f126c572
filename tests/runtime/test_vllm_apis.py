"""What ``vllm serve`` offers beyond chat and completions, through our runtime and real clients.

The Responses API with the OpenAI SDK (streamed and not) on SmolLM2; ``/v1/models/{id}``; score,
rerank and pooling on MiniLM (an embedding model scores by cosine similarity); classification on a
tiny random sequence classifier; LoRA adapters loaded at run time into the tiny random Llama behind
vLLM's flag and vLLM's own ``--api-key``; TLS and CORS from vLLM's options; and an API the model
cannot do answers a 400 saying so.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.runtime.conftest import (
    CACHE,
    MINILM,
    REPO,
    SMOLLM2,
    START_TIMEOUT,
    TINY,
    Server,
    serving,
    start_tiny_server,
)

pytestmark = pytest.mark.runtime

VARIANTS = Path(__file__).with_name("tiny_variants.py")
VLLM_KEY = "vllm-style-key"


def sdk(server: Server, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)


def assert_openai_error(response: httpx.Response, status: int, *words: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status
    assert isinstance(error["type"], str)
    for word in words:
        assert word in error["message"], error["message"]
    return dict(error)


# --- The Responses API and /v1/models/{id} on SmolLM2 -------------------------------------------------


def test_responses_create_with_the_openai_sdk(smollm2: Server) -> None:
    response = sdk(smollm2).responses.create(model=SMOLLM2, input="Say hi.", max_output_tokens=24, temperature=0)
    assert response.object == "response"
    assert response.status in ("completed", "incomplete")
    assert response.output_text.strip()
    assert response.usage is not None
    assert 0 < response.usage.output_tokens <= 24


def test_responses_create_streamed_with_the_openai_sdk(smollm2: Server) -> None:
    stream = sdk(smollm2).responses.create(
        model=SMOLLM2, input="Name three colours.", max_output_tokens=24, temperature=0, stream=True
    )
    events = list(stream)
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert deltas.strip()
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == deltas


def test_responses_by_id_without_the_store_is_a_clear_404(smollm2: Server) -> None:
    with pytest.raises(openai.NotFoundError):
        sdk(smollm2).responses.retrieve("resp_unknown")
    assert_openai_error(httpx.get(f"{smollm2.url}/v1/responses/resp_unknown"), 404, "resp_unknown")
    assert_openai_error(httpx.post(f"{smollm2.url}/v1/responses/resp_unknown/cancel"), 404, "resp_unknown")


def test_invalid_responses_request_names_the_field(smollm2: Server) -> None:
    bad = httpx.post(f"{smollm2.url}/v1/responses", json={"model": SMOLLM2, "input": "x", "max_output_tokens": "many"})
    assert assert_openai_error(bad, 400)["param"] == "max_output_tokens"


def test_models_retrieve_by_id(smollm2: Server) -> None:
    card = sdk(smollm2).models.retrieve(SMOLLM2)  # the SDK sends the slash as %2F
    assert card.id == SMOLLM2
    assert card.owned_by == "system"
    listed = httpx.get(f"{smollm2.url}/v1/models").json()["data"][0]
    single = httpx.get(f"{smollm2.url}/v1/models/{SMOLLM2}").json()
    # The same card, but for the permission's id, which vLLM makes afresh for every listing.
    assert {**single, "permission": None} == {**listed, "permission": None}
    with pytest.raises(openai.NotFoundError):
        sdk(smollm2).models.retrieve("no-such-model")
    error = assert_openai_error(httpx.get(f"{smollm2.url}/v1/models/no-such-model"), 404, "no-such-model")
    assert error["param"] == "model"


@pytest.mark.parametrize(
    ("path", "body", "api"),
    [
        ("/score", {"text_1": "a", "text_2": "b"}, "Score"),
        ("/v1/score", {"text_1": "a", "text_2": "b"}, "Score"),
        ("/rerank", {"query": "a", "documents": ["b"]}, "Rerank"),
        ("/v2/rerank", {"query": "a", "documents": ["b"]}, "Rerank"),
        ("/pooling", {"input": "a"}, "Pooling"),
        ("/classify", {"input": "a"}, "Classification"),
        ("/v1/embeddings", {"input": "a"}, "Embeddings"),
    ],
)
def test_apis_a_chat_model_cannot_do_say_so(smollm2: Server, path: str, body: dict[str, object], api: str) -> None:
    answer = httpx.post(smollm2.url + path, json={"model": SMOLLM2, **body}, timeout=30)
    assert_openai_error(answer, 400, f"does not support the {api} API", "generate")


def test_lora_updates_are_refused_without_vllms_flag(smollm2: Server) -> None:
    body = {"lora_name": "x", "lora_path": "/tmp/x"}
    for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
        assert_openai_error(httpx.post(smollm2.url + path, json=body), 404, "VLLM_ALLOW_RUNTIME_LORA_UPDATING")


# --- Score, rerank and pooling on MiniLM ----------------------------------------------------------------

QUERY = "What is the capital of France?"
DOCS = ["Bananas are yellow and rich in potassium.", "Paris is the capital and largest city of France."]


@pytest.mark.parametrize("path", ["/score", "/v1/score"])
def test_score_on_an_embedding_model(minilm: Server, path: str) -> None:
    answer = httpx.post(minilm.url + path, json={"model": MINILM, "text_1": QUERY, "text_2": DOCS}, timeout=30)
    assert answer.status_code == 200, answer.text
    scores = [item["score"] for item in sorted(answer.json()["data"], key=lambda d: d["index"])]
    assert len(scores) == 2
    assert scores[1] > scores[0] + 0.2


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_rerank_on_an_embedding_model(minilm: Server, path: str) -> None:
    body = {"model": MINILM, "query": QUERY, "documents": DOCS, "top_n": 2}
    answer = httpx.post(minilm.url + path, json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["index"] for r in results] == [1, 0]
    assert results[0]["document"]["text"] == DOCS[1]


def test_pooling_on_an_embedding_model(minilm: Server) -> None:
    answer = httpx.post(f"{minilm.url}/pooling", json={"model": MINILM, "input": "hello world"}, timeout=30)
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert len(data) == 1
    assert len(data[0]["data"]) == 384  # MiniLM's embedding size


def test_apis_an_embedding_model_cannot_do_say_so(minilm: Server) -> None:
    classify = httpx.post(f"{minilm.url}/classify", json={"model": MINILM, "input": "a"})
    assert_openai_error(classify, 400, "does not support the Classification API", "embed")
    responses = httpx.post(f"{minilm.url}/v1/responses", json={"model": MINILM, "input": "a"})
    assert_openai_error(responses, 400, "does not support the Responses API")


# --- Classification on a tiny random classifier ------------------------------------------------------


@pytest.fixture(scope="module")
def classifier(runtime_tmp: Path, tiny_model: Path) -> Iterator[Server]:
    target = CACHE / "test-models" / "tiny-llama-classifier-v1"
    subprocess.run([sys.executable, str(VARIANTS), "classifier", str(tiny_model), str(target)], check=True)
    with serving(start_tiny_server(runtime_tmp, "tiny-classifier", target)) as server:
        yield server


def test_classify_on_a_classifier(classifier: Server) -> None:
    answer = httpx.post(f"{classifier.url}/classify", json={"model": TINY, "input": ["so calm", "wow!"]}, timeout=30)
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert [d["index"] for d in data] == [0, 1]
    for item in data:
        assert item["num_classes"] == 2
        assert item["label"] in ("calm", "excited")
        assert sum(item["probs"]) == pytest.approx(1, abs=1e-3)
    chat = httpx.post(f"{classifier.url}/v1/chat/completions", json={"model": TINY, "messages": []})
    assert_openai_error(chat, 400, "does not support the Chat Completions API", "classify")


# --- LoRA at run time, the Responses store and vLLM's --api-key on the tiny Llama -------------------


@pytest.fixture(scope="module")
def adapter() -> Path:
    target = CACHE / "test-models" / "tiny-llama-lora-v1"
    subprocess.run([sys.executable, str(VARIANTS), "lora", str(target)], check=True)
    return target


@pytest.fixture(scope="module")
def tiny_vllm_flags(runtime_tmp: Path, tiny_model: Path) -> Iterator[Server]:
    """Started as a ``vllm serve`` user would: vLLM's flags and variables, no NIM_API_KEY."""
    server = start_tiny_server(
        runtime_tmp, "tiny-vllm-flags", tiny_model,
        NIM_PASSTHROUGH_ARGS=f"--enable-lora --max-lora-rank 8 --max-loras 1 --api-key {VLLM_KEY}",
        VLLM_ALLOW_RUNTIME_LORA_UPDATING="1", VLLM_ENABLE_RESPONSES_API_STORE="1",
    )  # fmt: skip
    with serving(server):
        yield server


def test_vllms_api_key_flag_is_enforced(tiny_vllm_flags: Server) -> None:
    with pytest.raises(openai.AuthenticationError):
        sdk(tiny_vllm_flags, "wrong").completions.create(model=TINY, prompt="hi", max_tokens=2)
    done = sdk(tiny_vllm_flags, VLLM_KEY).completions.create(model=TINY, prompt="hi", max_tokens=2)
    assert done.choices[0].text is not None
    for path in ("/v1/models", f"/v1/models/{TINY}", "/v1/responses/x"):
        assert_openai_error(httpx.get(tiny_vllm_flags.url + path), 401, "API key")
    for path in ("/score", "/tokenize", "/v1/load_lora_adapter"):
        assert_openai_error(httpx.post(tiny_vllm_flags.url + path, json={}), 401, "API key")
    for path in ("/v1/health/ready", "/v1/health/live", "/v1/metrics", "/v1/metadata"):
        assert httpx.get(tiny_vllm_flags.url + path).status_code == 200, path


def test_lora_adapter_load_use_and_unload(tiny_vllm_flags: Server, adapter: Path) -> None:
    client = sdk(tiny_vllm_flags, VLLM_KEY)
    headers = {"authorization": f"Bearer {VLLM_KEY}"}
    url = tiny_vllm_flags.url

    def complete(model: str) -> str:
        return client.completions.create(model=model, prompt="The", max_tokens=12, temperature=0).choices[0].text

    base = complete(TINY)
    loaded = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "tuned", "lora_path": str(adapter)},
                        headers=headers, timeout=60)  # fmt: skip
    assert loaded.status_code == 200, loaded.text
    assert "tuned" in loaded.text
    card = client.models.retrieve("tuned")
    assert (card.id, card.model_extra["parent"]) == ("tuned", TINY)  # type: ignore[index]
    assert complete("tuned") != base  # the adapter's random weights change the output
    again = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "tuned", "lora_path": str(adapter)},
                       headers=headers)  # fmt: skip
    assert_openai_error(again, 400, "already been loaded")
    missing = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "nope", "lora_path": "/no/such/dir"},
                         headers=headers, timeout=60)  # fmt: skip
    assert missing.status_code in (400, 404), missing.text
    assert "error" in missing.json()

    unloaded = httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "tuned"}, headers=headers)
    assert unloaded.status_code == 200, unloaded.text
    assert [m.id for m in client.models.list()] == [TINY]
    with pytest.raises(openai.NotFoundError):
        complete("tuned")
    gone = httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "tuned"}, headers=headers)
    assert_openai_error(gone, 404, "tuned")


def test_stored_responses_are_retrieved_by_id(tiny_vllm_flags: Server) -> None:
    """With vLLM's VLLM_ENABLE_RESPONSES_API_STORE, responses are kept and readable by id."""
    client = sdk(tiny_vllm_flags, VLLM_KEY)
    created = client.responses.create(model=TINY, input="Once", max_output_tokens=8, store=True)
    fetched = client.responses.retrieve(created.id)
    assert fetched.id == created.id
    assert fetched.output_text == created.output_text
    # Long enough (the tiny model rarely samples its end token) to still run when the cancel arrives.
    background = client.responses.create(model=TINY, input="Once", max_output_tokens=800, background=True, store=True)
    assert background.status in ("queued", "in_progress")
    assert client.responses.cancel(background.id).status == "cancelled"
    assert client.responses.retrieve(background.id).status == "cancelled"


# --- vLLM's TLS and CORS options, and a refused option --------------------------------------------


def test_a_server_option_nim_runtime_does_not_apply_stops_the_start(runtime_tmp: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIM_")} | {"NIM_PASSTHROUGH_ARGS": "--port 9000"}
    result = subprocess.run([sys.executable, "-m", "nim_runtime"], env=env, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert "--port" in result.stderr
    assert "NIM_SERVER_PORT" in result.stderr


def test_tls_and_cors_from_vllms_options(runtime_tmp: Path, tiny_model: Path) -> None:
    cert, key = runtime_tmp / "tls.crt", runtime_tmp / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    origin = "https://app.example"
    server = start_tiny_server(
        runtime_tmp, "tiny-tls", tiny_model,
        NIM_PASSTHROUGH_ARGS=f"--ssl-certfile {cert} --ssl-keyfile {key} --allowed-origins '[\"{origin}\"]'",
    )  # fmt: skip
    url = f"https://127.0.0.1:{server.port}"
    try:
        with httpx.Client(base_url=url, verify=str(cert), timeout=30) as client:
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                assert server.proc.poll() is None, server.tail()
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/v1/health/ready").status_code == 200:
                        break
                time.sleep(0.5)
            chat = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            answer = client.post("/v1/chat/completions", json=chat, headers={"origin": origin})
            assert answer.status_code == 200, answer.text
            assert answer.headers["access-control-allow-origin"] == origin
            preflight = client.options(
                "/v1/chat/completions", headers={"origin": origin, "access-control-request-method": "POST"}
            )
            assert preflight.status_code == 200
            foreign = client.post("/v1/chat/completions", json=chat, headers={"origin": "https://evil.example"})
            assert "access-control-allow-origin" not in foreign.headers
        with pytest.raises(httpx.HTTPError):  # plaintext is not served
            httpx.get(f"http://127.0.0.1:{server.port}/v1/health/ready", timeout=5)
    finally:
        server.stop()
