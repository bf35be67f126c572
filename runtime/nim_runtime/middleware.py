"""One ASGI middleware in front of every route: metrics, the API key, body size, drain and admission.

It is plain ASGI rather than Starlette's ``BaseHTTPMiddleware`` so streamed responses pass through
untouched and "in flight" lasts until the last byte of a stream is sent: that is what a drain waits for,
and what the admission limit counts (vLLM queues whatever it is given, without bound).

An answer that comes before the request body has been read (a 413, 401, 429 or 503, or a route that
stops reading at the size limit) is sent only after the rest of the body is read and dropped: closing a
connection with unread data makes the kernel reset it, and a client still sending (urllib, or any client
that sends ``Connection: close``) then gets ``ConnectionResetError`` instead of the answer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nim_runtime.auth import bearer_matches, is_protected
from nim_runtime.errors import error_body
from nim_runtime.lifecycle import Lifecycle, Phase
from nim_runtime.metrics import RuntimeMetrics

#: Seconds a client refused for a full queue is told to wait: one engine step frees slots on the CPU,
#: and the OpenAI SDK honours the header on its automatic retries.
QUEUE_FULL_RETRY_AFTER = "1"

#: Bytes of an unread request body read and dropped before an early answer; beyond them (or after
#: DISCARD_SECONDS) the answer is sent with ``Connection: close`` and the rest is left unread, so a client
#: sending without end cannot hold the server.
MAX_DISCARD_BYTES = 64 * 1024 * 1024
DISCARD_SECONDS = 10.0
_CLOSE = (b"connection", b"close")

#: Routes reported under their own label; anything else is "other" (keeps label cardinality bounded).
KNOWN_ROUTES = frozenset({
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/tokenize", "/detokenize",
    "/v1/health/live", "/v1/health/ready", "/v1/metrics", "/v1/version", "/v1/metadata", "/v1/manifest",
    "/v1/license", "/inference/chat_completion", "/ls/inference/chat_completion", "/v1/responses", "/score",
    "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank", "/pooling", "/classify", "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
})  # fmt: skip


class Gatekeeper:
    def __init__(
        self,
        app: ASGIApp,
        *,
        lifecycle: Lifecycle,
        metrics: RuntimeMetrics,
        api_key: str | Sequence[str] | None,
        max_request_bytes: int,
        max_queued_requests: int = 0,
    ) -> None:
        self.app = app
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.api_key = api_key
        self.max_request_bytes = max_request_bytes
        self.max_queued_requests = max_queued_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        status = 500

        body = RequestBody(scope, receive)
        receive = body.receive

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Every answer during the drain ends its connection: the client's next request opens a new
                # one, which the Service sends to a pod that is not going away.
                close = self.lifecycle.phase is Phase.DRAINING
                if not await body.discard_rest():
                    close = True
                headers = list(message.get("headers", []))
                if close and _CLOSE not in headers:
                    message = {**message, "headers": [*headers, _CLOSE]}
            await send(message)

        inference = method == "POST" and is_protected(path)
        try:
            refusal = self._refusal(scope, path, inference)
            if refusal is not None:
                await _send_json(send_and_record, *refusal)
                return
            if not inference:
                await self.app(scope, receive, send_and_record)
                return
            if not self.lifecycle.try_request_started(self.max_queued_requests):
                message = (
                    f"The server is busy: {self.max_queued_requests} requests are already in flight "
                    "(NIM_MAX_QUEUED_REQUESTS); retry after the time in Retry-After"
                )
                retry = {"retry-after": QUEUE_FULL_RETRY_AFTER}
                await _send_json(send_and_record, 429, error_body(429, message), retry)
                return
            self.metrics.in_flight.inc()
            try:
                await self.app(scope, receive, send_and_record)
            finally:
                self.lifecycle.request_finished()
                self.metrics.in_flight.dec()
        finally:
            route = path if path in KNOWN_ROUTES else "other"
            self.metrics.observe(route, method, status, time.perf_counter() - started)

    def _refusal(self, scope: Scope, path: str, inference: bool) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        """Why this request is answered here without reaching a route, or None."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if (
            self.api_key is not None
            and is_protected(path)
            and not bearer_matches(headers.get("authorization"), self.api_key)
        ):
            body = error_body(401, "Missing or wrong API key: send `Authorization: Bearer <NIM_API_KEY or --api-key>`")
            return 401, body, {"www-authenticate": "Bearer"}
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_request_bytes:
            message = f"Request body of {length} bytes exceeds the limit of {self.max_request_bytes} bytes"
            return 413, error_body(413, message), {}
        serving = self.lifecycle.phase is Phase.READY or self.lifecycle.serves_while_draining(scope.get("client"))
        if inference and (not self.lifecycle.engine_alive() or not serving):
            retry = {"retry-after": "5"} if self.lifecycle.phase is Phase.LOADING else {}
            message = {
                Phase.LOADING: "The model is still loading; retry when /v1/health/ready answers 200",
                Phase.DRAINING: "The server is shutting down and accepts no new requests",
                Phase.FAILED: "The model failed to load; see the server log",
                Phase.ENGINE_DEAD: "The inference engine died; the server is exiting and will be restarted",
            }[self.lifecycle.phase]
            return 503, error_body(503, message), {**retry, "connection": "close"}
        return None


class RequestBody:
    """The request body's progress, so an early answer can read and drop the rest first."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"0").strip()
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        self._receive = receive
        self.done = not chunked and length in (b"", b"0")
        self._started = False
        # A client sending `Expect: 100-continue` holds the body back until the server asks for it (uvicorn
        # does on the first read): answering without reading is then the right thing, nothing was sent.
        self._withheld = b"100-continue" in headers.get(b"expect", b"").lower()

    async def receive(self) -> Message:
        self._started = True
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.done = True
        return message

    async def discard_rest(self) -> bool:
        """Read and drop the unread part of the body; False when it is over MAX_DISCARD_BYTES or too slow."""
        if self.done or (self._withheld and not self._started):
            return True
        dropped = 0
        try:
            async with asyncio.timeout(DISCARD_SECONDS):
                while not self.done:
                    dropped += len((await self.receive()).get("body", b""))
                    if dropped > MAX_DISCARD_BYTES and not self.done:
                        return False
        except TimeoutError:
            return False
        return True


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
    payload = json.dumps(body).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw_headers += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})
