"""Calls llama-stack-client 0.0.40 makes; run by that client's own interpreter (see clients.py).

Usage: ``python llamastack_calls.py BASE_URL MODEL`` with a JSON list of calls on stdin, each
``{"name": ..., "stream": bool, "kwargs": {...}}`` for ``client.inference.chat_completion``. Prints one
JSON list: per call the seconds it took and either the response, as the client's own types parsed it
(non-streamed answers are parsed with strict validation, so a field of the wrong shape fails), the
events the client's stream yields (each checked against its stream chunk type), or the API error the
client raised. Only the standard library and the client are imported: this runs outside our environment.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from typing import Any

from llama_stack_client import APIStatusError, LlamaStackClient, Stream
from llama_stack_client.types.inference_chat_completion_response import ChatCompletionResponseStreamChunk


def events_of(stream: Iterable[Any]) -> list[dict[str, Any]]:
    """The events of a streamed answer as the client iterates them, each checked against its chunk type."""
    return [ChatCompletionResponseStreamChunk.model_validate(chunk.model_dump()).event.model_dump() for chunk in stream]


def call(base_url: str, model: str, spec: dict[str, Any]) -> dict[str, Any]:
    # Strict validation makes the client check every field of a JSON answer against its types (it would
    # refuse a stream's content type, so there each event is checked against the chunk type instead).
    client = LlamaStackClient(base_url=base_url, timeout=120, max_retries=0,
                              _strict_response_validation=not spec["stream"])  # fmt: skip
    started = time.monotonic()
    try:
        answer = client.inference.chat_completion(model=model, stream=spec["stream"], **spec["kwargs"])
    except APIStatusError as exc:
        return {"seconds": time.monotonic() - started, "error": {"status": exc.status_code, "body": exc.body}}
    if isinstance(answer, Stream):
        events = events_of(answer)
        return {"seconds": time.monotonic() - started, "events": events}
    return {"seconds": time.monotonic() - started, "response": answer.model_dump()}


def main() -> None:
    base_url, model = sys.argv[1], sys.argv[2]
    specs = json.load(sys.stdin)
    print(json.dumps([{"name": s["name"], **call(base_url, model, s)} for s in specs]))


if __name__ == "__main__":
    main()
