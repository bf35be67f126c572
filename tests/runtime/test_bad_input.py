"""Bad input gets an OpenAI-shaped 4xx, never a 500, and the engine keeps serving."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.runtime.conftest import SMOLLM2, Server

pytestmark = pytest.mark.runtime

HI = [{"role": "user", "content": "hi"}]


def image_message(url: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]  # fmt: skip


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status
    assert error["message"]
    assert "Traceback" not in error["message"]
    return dict(error)


@pytest.mark.parametrize(
    ("path", "content", "param"),
    [
        ("/v1/chat/completions", b'{"model": "x", "messages": [', None),
        ("/v1/completions", b"[1, 2, 3]", None),
        ("/tokenize", b"", None),
        ("/v1/chat/completions", b'{"model": "%s", "messages": "hi"}' % SMOLLM2.encode(), "messages"),
        ("/v1/completions", b'{"model": "%s", "prompt": "x", "max_tokens": "ten"}' % SMOLLM2.encode(), "max_tokens"),
        ("/v1/chat/completions", b'{"model": "%s", "messages": [], "temperature": {}}' % SMOLLM2.encode(), None),
    ],
    ids=["malformed-json", "not-an-object", "empty-body", "messages-not-a-list", "max-tokens-string", "temp-object"],
)
def test_malformed_requests_get_400(smollm2: Server, path: str, content: bytes, param: str | None) -> None:
    response = httpx.post(smollm2.url + path, content=content, headers={"content-type": "application/json"})
    error = assert_openai_error(response, 400)
    if param:
        assert error["param"] == param


def test_unknown_model_is_404(smollm2: Server) -> None:
    response = httpx.post(f"{smollm2.url}/v1/chat/completions", json={"model": "gpt-17", "messages": HI})
    assert "gpt-17" in assert_openai_error(response, 404)["message"]


def test_too_many_output_tokens_is_400(smollm2: Server) -> None:
    response = httpx.post(
        f"{smollm2.url}/v1/chat/completions", json={"model": SMOLLM2, "messages": HI, "max_tokens": 100_000}
    )
    assert assert_openai_error(response, 400)["param"] == "max_tokens"


def test_prompt_longer_than_the_context_is_400(smollm2: Server) -> None:
    response = httpx.post(
        f"{smollm2.url}/v1/completions", json={"model": SMOLLM2, "prompt": "hello " * 9000, "max_tokens": 1}, timeout=60
    )
    assert_openai_error(response, 400)


def test_oversized_body_is_413(smollm2: Server) -> None:
    response = httpx.post(
        f"{smollm2.url}/v1/completions", content=b"x" * (9 * 1024 * 1024), headers={"content-type": "application/json"}
    )
    assert_openai_error(response, 413)


def test_image_for_a_text_only_model_is_400(smollm2: Server) -> None:
    response = httpx.post(
        f"{smollm2.url}/v1/chat/completions",
        json={"model": SMOLLM2, "messages": image_message("https://example.com/cat.png")},
    )
    error = assert_openai_error(response, 400)
    assert "text-only" in error["message"]
    assert error["param"] == "messages.0.content.1"


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "not a url", "data:image/png;base64,@@@", ""])
def test_bad_image_urls_are_400(smollm2: Server, url: str) -> None:
    response = httpx.post(f"{smollm2.url}/v1/chat/completions", json={"model": SMOLLM2, "messages": image_message(url)})
    assert "image" in assert_openai_error(response, 400)["message"].lower()


def test_unknown_route_is_an_openai_404(smollm2: Server) -> None:
    assert_openai_error(httpx.get(f"{smollm2.url}/v1/nothing-here"), 404)


def test_engine_still_serves_after_bad_input(smollm2: Server) -> None:
    response = httpx.post(
        f"{smollm2.url}/v1/completions", json={"model": SMOLLM2, "prompt": "The capital of France is", "max_tokens": 2}
    )
    assert response.status_code == 200
