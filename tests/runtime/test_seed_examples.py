"""Every example request of NIM's API reference pages, sent as written, answers in under 30 s.

The embedded SmolLM2 is served under the model names the pages use (NIM_SERVED_MODEL_NAME takes
aliases, as NIM's does), so the bodies go out byte for byte as curl would send them. The streaming
example sets no max_tokens: before the manifest carried SmolLM2's sampling defaults and a default
answer length, it sampled at temperature 1.0 to the end of the 8192-token context, for minutes.

The vision page's two image examples ask a text-only model about an image; the answer that is right
for this model is the OpenAI-shaped 400 naming the image part (and it must come at once, before any
attempt to fetch the image).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.runtime.conftest import Server, serving, start_server
from tests.runtime.seed_examples import EXAMPLES, SEEDS, CurlRequest, examples_in, parse_curl

pytestmark = pytest.mark.runtime

#: The brief: every example completes within this many seconds on these 2-core machines.
BUDGET_SECONDS = 30.0
PAGE_MODELS = ("meta/llama-3.1-8b-instruct", "meta/llama-3.2-11b-vision-instruct")
IDS = [f"{page.split('-')[1]}-{i}-{parse_curl(cmd).label}" for i, (page, cmd) in enumerate(EXAMPLES)]


@pytest.fixture(scope="module")
def seed_server(runtime_tmp: Path) -> Iterator[Server]:
    server = start_server(runtime_tmp, "seed-examples", NIM_SERVED_MODEL_NAME=",".join(PAGE_MODELS))
    with serving(server):
        yield server


@pytest.mark.skipif(not SEEDS.is_dir(), reason=f"the reference pages are not at {SEEDS}")
@pytest.mark.parametrize("page", sorted({page for page, _ in EXAMPLES}))
def test_the_transcription_matches_the_pages(page: str) -> None:
    assert examples_in(SEEDS / page) == [command for p, command in EXAMPLES if p == page]


def send(server: Server, request: CurlRequest) -> tuple[httpx.Response, bytes, float]:
    """Send as curl would and read the whole answer (a stream to its end); returns the elapsed seconds."""
    started = time.monotonic()
    with (
        httpx.Client(base_url=server.url, timeout=BUDGET_SECONDS * 4) as client,
        client.stream(request.method, request.path, headers=list(request.headers), content=request.body) as answer,
    ):
        body = answer.read()
    return answer, body, time.monotonic() - started


@pytest.mark.parametrize(("page", "command"), EXAMPLES, ids=IDS)
def test_seed_example(seed_server: Server, page: str, command: str, record_property: pytest.RecordProperty) -> None:
    request = parse_curl(command)
    answer, body, seconds = send(seed_server, request)
    record_property("seconds", round(seconds, 3))
    print(f"\n{request.label}: {answer.status_code} in {seconds:.2f} s")
    assert seconds < BUDGET_SECONDS, f"{request.label} took {seconds:.1f} s"
    check_answer(request, answer, body)


def check_answer(request: CurlRequest, answer: httpx.Response, body: bytes) -> None:
    """The answer a client of this example would accept as valid, for the embedded model."""
    sent = json.loads(request.body) if request.body else {}
    if _has_image(request):
        assert answer.status_code == 400, body
        error = json.loads(body)["error"]
        assert "text-only" in error["message"]
        assert error["param"].startswith("messages.0.content")
        return
    assert answer.status_code == 200, body
    match request.path:
        case "/v1/chat/completions" if sent.get("stream"):
            events = [line[6:] for line in body.decode().splitlines() if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            chunks = [json.loads(e) for e in events[:-1]]
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
            assert text.strip()
            reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
            assert reasons[-1] in ("stop", "length")
        case "/v1/chat/completions":
            completion = json.loads(body)
            assert completion["model"] == sent["model"]
            assert completion["choices"][0]["message"]["content"].strip()
            assert completion["usage"]["completion_tokens"] <= sent["max_tokens"]
        case "/v1/models":
            assert [card["id"] for card in json.loads(body)["data"]][:1] == [PAGE_MODELS[0]]
        case "/v1/health/live" | "/v1/health/ready":
            assert json.loads(body)["object"] == "health.response"
        case "/v1/metrics":
            assert b"vllm:" in body
            assert b"nim_runtime_requests_total" in body
        case _:
            assert isinstance(json.loads(body), dict)


def _has_image(request: CurlRequest) -> bool:
    """Whether the example sends an image item (OpenAI's ``image_url`` or Llama Stack's ``image``)."""
    return b'"image' in (request.body or b"")
