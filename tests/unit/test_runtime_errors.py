"""Error shaping, image checks, the API key and Llama Stack translation (pure; no vLLM)."""

from __future__ import annotations

import pytest

from nim_runtime.auth import bearer_matches, is_protected
from nim_runtime.content import check_chat_images, image_url_problem
from nim_runtime.errors import ApiError, describe_validation_errors, error_body
from nim_runtime.routes.llamastack import from_openai_response
from nim_runtime.routes.llamastack_request import to_openai_request


def test_error_body_has_the_openai_shape() -> None:
    assert error_body(404, "no such model", param="model") == {
        "error": {"message": "no such model", "type": "NotFoundError", "param": "model", "code": 404}
    }
    assert error_body(418, "teapot")["error"]["type"] == "BadRequestError"
    assert error_body(502, "gateway")["error"]["type"] == "InternalServerError"


def test_validation_errors_are_short_and_name_the_field() -> None:
    errors = [{"loc": ("body", "function-wrap[x()]", "max_tokens"), "msg": "Input should be a valid integer"}] * 7
    message, param = describe_validation_errors(errors)
    assert param == "max_tokens"
    assert "and 2 more" in message
    assert "function-wrap" not in message


@pytest.mark.parametrize(
    ("url", "ok"),
    [("https://example.com/a.png", True), ("data:image/png;base64,aGVsbG8=", True), ("ftp://x/a.png", False),
     ("data:text/plain;base64,aGk=", False), ("data:image/png;base64,@@", False), ("https://", False),
     ("", False), (42, False)],
)  # fmt: skip
def test_image_urls(url: object, ok: bool) -> None:
    assert (image_url_problem(url) is None) is ok


def test_images_to_a_text_only_model_are_refused_with_the_part() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://e.com/a.png"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}, image]}]
    with pytest.raises(ApiError) as caught:
        check_chat_images(messages, multimodal=False, model="m")
    assert caught.value.status == 400
    assert caught.value.param == "messages.0.content.1"
    check_chat_images(messages, multimodal=True, model="m")


def test_bearer_key() -> None:
    assert bearer_matches("Bearer s3cret", "s3cret")
    assert bearer_matches("bearer s3cret", "s3cret")
    assert not bearer_matches("Bearer wrong", "s3cret")
    assert not bearer_matches(None, "s3cret")
    assert not bearer_matches("Basic s3cret", "s3cret")
    assert is_protected("/v1/chat/completions")
    assert not is_protected("/v1/health/ready")
    assert not is_protected("/v1/metrics")


def test_llama_stack_request_translation() -> None:
    request = to_openai_request({
        "model_id": "m",
        "messages": [{"role": "user", "content": [{"image": {"uri": "https://e.com/a.jpg"}}, "What is this?"]}],
        "sampling_params": {"strategy": {"type": "greedy"}, "max_tokens": 7},
        "tools": [{"tool_name": "lookup", "description": "d", "parameters": {"q": {"param_type": "str"}}}],
        "tool_choice": "lookup",
    })  # fmt: skip
    assert request["model"] == "m"
    assert request["max_tokens"] == 7
    assert request["temperature"] == 0.0
    assert request["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": "https://e.com/a.jpg"}},
        {"type": "text", "text": "What is this?"},
    ]
    assert request["tools"][0]["function"]["parameters"]["properties"]["q"]["type"] == "string"
    assert request["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}


BAD_LLAMA_STACK = [
    {},
    {"model_id": "m"},
    {"model_id": "m", "messages": [{"role": "user"}]},
    {"model_id": "m", "messages": [{"role": "user", "content": [{"audio": 1}]}]},
]


@pytest.mark.parametrize("body", BAD_LLAMA_STACK)
def test_llama_stack_bad_requests(body: dict[str, object]) -> None:
    with pytest.raises(ApiError):
        to_openai_request(body)


def test_llama_stack_response_translation() -> None:
    response = {"choices": [{"finish_reason": "length", "message": {"content": "Paris", "tool_calls": [
        {"id": "c1", "function": {"name": "f", "arguments": "{}"}}]}}]}  # fmt: skip
    assert from_openai_response(response) == {
        "completion_message": {"role": "assistant", "content": "Paris", "stop_reason": "out_of_tokens",
                               "tool_calls": [{"call_id": "c1", "tool_name": "f", "arguments": {}}]},
        "logprobs": None,
    }  # fmt: skip
