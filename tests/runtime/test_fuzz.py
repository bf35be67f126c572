"""Schema-driven fuzzing of every route in the runtime's own ``/openapi.json`` (schemathesis).

The schema describes the inference bodies with vLLM's request models, so both modes matter: positive
cases (valid per schema: they reach the engine) and negative cases (schema violations: they must be
refused cleanly). For every case: no 5xx, and any error is OpenAI-shaped. Generation is derandomized,
so a run is repeatable; costs are bounded by clamping the knobs that multiply engine work.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from tests.runtime.conftest import TINY, Server

pytestmark = pytest.mark.runtime

#: Cases per operation and generation mode.
MAX_EXAMPLES = 30
#: Upper bounds for fields that multiply engine work (tokens x sequences); larger generated values are
#: lowered to these, smaller and ill-typed ones are sent as generated.
WORK_BOUNDS = {
    "max_tokens": 8, "max_completion_tokens": 8, "max_output_tokens": 8, "min_tokens": 8, "n": 2, "best_of": 2,
    "logprobs": 5, "top_logprobs": 5, "prompt_logprobs": 5,
}  # fmt: skip
GENERATION_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})
LLAMA_STACK_ROUTES = frozenset({"/inference/chat_completion", "/ls/inference/chat_completion"})
#: Seconds one request may take; generous because a benchmark may share the machine.
REQUEST_TIMEOUT = 120


def error_shape_problem(status: int, content: bytes) -> str | None:
    """What is wrong with an error response's body, or None when it is OpenAI-shaped."""
    try:
        error = json.loads(content)["error"]
    except (ValueError, KeyError, TypeError):
        return f"not an OpenAI error body: {content[:200]!r}"
    if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
        return f"error keys are not message/type/param/code: {content[:200]!r}"
    if error["code"] != status or not error["message"] or "Traceback" in error["message"]:
        return f"bad code or message: {content[:200]!r}"
    return None


def bound_work(body: Any, *, path: str, positive: bool) -> Any:
    """The body with engine work capped; positive cases also name the served model so they run.

    Without ``max_tokens`` vLLM generates up to the context length, so generation routes get a default.
    """
    if not isinstance(body, dict):
        return body
    bounded = {
        k: min(v, WORK_BOUNDS[k]) if k in WORK_BOUNDS and type(v) is int else v  # bool is not an int here
        for k, v in body.items()
    }
    if path in LLAMA_STACK_ROUTES:
        sampling = bounded.setdefault("sampling_params", {})
        if isinstance(sampling, dict):
            bounded["sampling_params"] = bound_work(sampling, path="", positive=False)
            bounded["sampling_params"].setdefault("max_tokens", WORK_BOUNDS["max_tokens"])
        if positive:
            bounded["model_id"] = TINY
    if path == "/v1/responses":
        bounded.setdefault("max_output_tokens", WORK_BOUNDS["max_output_tokens"])
    elif path in GENERATION_ROUTES and "max_tokens" not in bounded and "max_completion_tokens" not in bounded:
        bounded["max_tokens"] = WORK_BOUNDS["max_tokens"]
    if positive and path not in LLAMA_STACK_ROUTES and isinstance(bounded.get("model"), str | None):
        bounded["model"] = TINY
    return bounded


@pytest.fixture(scope="module")
def api_schema(tiny_small_batch: Server) -> schemathesis.BaseSchema:
    raw = httpx.get(f"{tiny_small_batch.url}/openapi.json", timeout=30).json()
    bodies = [p for p, ops in raw["paths"].items() if "requestBody" in ops.get("post", {})]
    assert {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/tokenize", "/detokenize",
            *LLAMA_STACK_ROUTES} <= set(bodies)  # fmt: skip
    return schemathesis.openapi.from_dict(raw)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_fuzzed_requests_never_get_a_5xx_or_a_malformed_error(
    tiny_small_batch: Server, api_schema: schemathesis.BaseSchema, mode: schemathesis.GenerationMode
) -> None:
    failures: list[str] = []
    statuses: dict[int, int] = {}
    positive = mode is schemathesis.GenerationMode.POSITIVE

    for result in api_schema.get_all_operations():
        operation = result.ok()
        if not positive and not list(operation.body):
            continue  # nothing to violate: the management GETs take no input

        @settings(
            max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
            phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: schemathesis.Case) -> None:
            case.body = bound_work(case.body, path=case.operation.path, positive=positive)
            response = case.call(base_url=tiny_small_batch.url, timeout=REQUEST_TIMEOUT)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            problem = None
            if response.status_code >= 500:
                problem = f"status {response.status_code}: {response.content[:300]!r}"
            elif response.status_code >= 400:
                problem = error_shape_problem(response.status_code, response.content)
            if problem:
                failures.append(f"{case.operation.label}: {problem}\n  {case.as_curl_command()[:600]}")

        run()

    print(f"fuzz {mode.value}: {sum(statuses.values())} cases, statuses {dict(sorted(statuses.items()))}")
    assert not failures, f"{len(failures)} failure(s):\n" + "\n".join(failures[:20])
    normal = {"model": TINY, "prompt": "Hello", "max_tokens": 4}
    after = httpx.post(f"{tiny_small_batch.url}/v1/completions", json=normal, timeout=REQUEST_TIMEOUT)
    assert after.status_code == 200, after.text
