"""Bad input gets an OpenAI-shaped 4xx, never a 500, and the engine keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
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


def completion(**fields: Any) -> bytes:
    """A valid completion request as JSON text, with ``fields`` spliced in as raw JSON text."""
    extra = "".join(f', "{k}": {v}' for k, v in fields.items())
    return b'{"model": "%s", "prompt": "x", "max_tokens": 2%s}' % (SMOLLM2.encode(), extra.encode())


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b'{"model": "%s", "prompt": "The capital' % SMOLLM2.encode(), None),
        (completion(temperature="-1"), "temperature"),
        (completion(top_p="NaN"), None),
        (completion(temperature="Infinity"), None),
        (completion(top_p="-Infinity"), None),
        (completion(max_tokens=str(10**30)), "max_tokens"),
        (completion(max_tokens="-3"), "max_tokens"),
        (completion(top_k="1.5"), "top_k"),
        (b'{"model": "%s", "prompt": "\xff\xfe\xfd", "max_tokens": 2}' % SMOLLM2.encode(), None),
    ],
    ids=[
        "truncated-json", "negative-temperature", "nan-top-p", "infinite-temperature", "minus-infinity-top-p",
        "astronomic-max-tokens", "negative-max-tokens", "fractional-top-k", "invalid-utf8",
    ],
)  # fmt: skip
def test_bad_values_get_400(smollm2: Server, content: bytes, param: str | None) -> None:
    response = httpx.post(
        f"{smollm2.url}/v1/completions", content=content, headers={"content-type": "application/json"}, timeout=60
    )
    error = assert_openai_error(response, 400)
    if param:
        assert param in (error["param"] or error["message"])


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [], "tool_choice": "auto"}, "tools"),
        ({"structured_outputs": True}, None),
    ],
    ids=["tool-choice-without-tools", "empty-tools", "structured-outputs-bool"],
)
def test_fields_vllm_validators_trip_on_are_400(smollm2: Server, extra: dict[str, Any], param: str | None) -> None:
    """vLLM's validators raise errors pydantic does not wrap for these (found by fuzzing: each was a 500)."""
    response = httpx.post(f"{smollm2.url}/v1/chat/completions", json={"model": SMOLLM2, "messages": HI, **extra})
    assert assert_openai_error(response, 400)["param"] == param


@pytest.mark.parametrize(
    "extra",
    [{"sampling_params": "fast"}, {"tools": [7]}, {"logprobs": {"top_k": "many"}}, {"response_format": "json"}],
    ids=["sampling-params-string", "tool-not-object", "top-k-string", "response-format-string"],
)
def test_malformed_llama_stack_requests_are_400(smollm2: Server, extra: dict[str, Any]) -> None:
    """Wrong shapes deep inside a Llama Stack request (each of these was a 500)."""
    body = {"model_id": SMOLLM2, "messages": [{"role": "user", "content": "hi"}], **extra}
    assert_openai_error(httpx.post(f"{smollm2.url}/inference/chat_completion", json=body, timeout=60), 400)


def test_oversized_chunked_body_is_413(smollm2: Server) -> None:
    """Without a Content-Length the middleware cannot refuse up front; the route stops reading at the limit."""

    def ten_megabytes() -> Iterator[bytes]:
        yield b'{"model": "x", "prompt": "'
        for _ in range(10):
            yield b"y" * (1024 * 1024)
        yield b'"}'

    response = httpx.post(
        f"{smollm2.url}/v1/completions", content=ten_megabytes(), headers={"content-type": "application/json"}
    )
    assert_openai_error(response, 413)


def test_unknown_fields_are_ignored_like_vllm_does(smollm2: Server) -> None:
    """vLLM accepts (and logs) fields it does not know; clients such as LangChain send a few."""
    response = httpx.post(
        f"{smollm2.url}/v1/completions", content=completion(frobnicate='{"a": [1]}', x_vendor_hint='"fast"')
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "url",
    ["data:image/png;base64,aGVsbG8gd29ybGQ=", "data:text/plain;base64,aGVsbG8=", "data:image/png,raw-bytes-not-b64"],
    ids=["base64-but-not-an-image", "not-an-image-type", "data-url-not-base64"],
)
def test_image_urls_that_are_not_images_are_400(smollm2: Server, url: str) -> None:
    response = httpx.post(f"{smollm2.url}/v1/chat/completions", json={"model": SMOLLM2, "messages": image_message(url)})
    assert_openai_error(response, 400)


def test_engine_still_serves_after_bad_input(smollm2: Server) -> None:
    response = httpx.post(
        f"{smollm2.url}/v1/completions", json={"model": SMOLLM2, "prompt": "The capital of France is", "max_tokens": 2}
    )
    assert response.status_code == 200
