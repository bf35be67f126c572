"""A small load generator for OpenAI-compatible servers, shared by every server a benchmark compares.

Two tools, both bounded:

- :func:`run_requests` / :func:`run_for`: streaming chat or completion requests from a fixed number of
  concurrent workers (closed loop: a worker sends its next request when the previous stream ends).
  Per request it records the time to the first content chunk, the gaps between content chunks and the
  output token count the server reports in its final usage chunk.
- ``python bench/loadgen.py probe URL SECONDS PATH...``: GET the given paths in turn for a while (on a
  kept-alive connection and on new connections) and print their latencies as JSON. It runs in its own
  process so that the event loop parsing 32 streams in the benchmark process does not add its own
  delays to the probe latencies.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

Api = Literal["chat", "completions"]
API_PATHS: dict[Api, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
#: Seconds one request may take before it counts as failed (keeps every loop bounded).
REQUEST_TIMEOUT = 300.0
#: Fixed prompts, used in turn, so every server sees the same requests in the same order.
PROMPTS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator keeps food cold, step by step, for a curious child.",
    "List the planets of the solar system and say one interesting fact about each.",
    "Describe a walk through a busy market in the morning, with sounds and smells.",
)


@dataclass(frozen=True, kw_only=True)
class RequestResult:
    """One streamed request; ``error`` is set (and the timings are partial) when it failed."""

    output_tokens: int
    ttft: float | None
    gaps: list[float]
    error: str | None = None


@dataclass(kw_only=True)
class CellResult:
    """Every request of one (api, concurrency) cell and the wall time they took together."""

    api: Api
    concurrency: int
    wall_seconds: float = 0.0
    requests: list[RequestResult] = field(default_factory=list)

    @property
    def output_tokens(self) -> int:
        return sum(r.output_tokens for r in self.requests if r.error is None)

    @property
    def tokens_per_second(self) -> float:
        return self.output_tokens / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def errors(self) -> list[str]:
        return [r.error for r in self.requests if r.error is not None]

    @property
    def ttfts(self) -> list[float]:
        return [r.ttft for r in self.requests if r.error is None and r.ttft is not None]

    @property
    def gaps(self) -> list[float]:
        return [gap for r in self.requests if r.error is None for gap in r.gaps]


def request_body(api: Api, *, model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """Greedy, fixed-length output: ``ignore_eos`` makes every request produce exactly ``max_tokens``."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if api == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


def _content_of(api: Api, chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    if api == "chat":
        return str((choices[0].get("delta") or {}).get("content") or "")
    return str(choices[0].get("text") or "")


async def stream_one(client: httpx.AsyncClient, api: Api, body: dict[str, Any]) -> RequestResult:
    """Send one streaming request and time its content chunks (role-only and usage chunks carry none)."""
    started = time.perf_counter()
    first: float | None = None
    last = started
    gaps: list[float] = []
    chunks = 0
    usage_tokens: int | None = None
    try:
        async with client.stream("POST", API_PATHS[api], json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                return RequestResult(output_tokens=0, ttft=None, gaps=[], error=f"{response.status_code}: {text}")
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                chunk = json.loads(payload)
                if chunk.get("usage"):
                    usage_tokens = int(chunk["usage"].get("completion_tokens") or 0)
                if not _content_of(api, chunk):
                    continue
                now = time.perf_counter()
                if first is None:
                    first = now
                else:
                    gaps.append(now - last)
                last = now
                chunks += 1
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        return RequestResult(output_tokens=0, ttft=None, gaps=gaps, error=f"{type(exc).__name__}: {exc}")
    ttft = None if first is None else first - started
    return RequestResult(output_tokens=usage_tokens if usage_tokens is not None else chunks, ttft=ttft, gaps=gaps)


def _client(base_url: str, concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(base_url=base_url, limits=limits, timeout=REQUEST_TIMEOUT)


async def run_requests(
    base_url: str, *, api: Api, model: str, concurrency: int, requests: int, max_tokens: int
) -> CellResult:
    """``requests`` requests from ``concurrency`` workers; the wall time runs from first send to last byte."""
    cell = CellResult(api=api, concurrency=concurrency)
    next_index = iter(range(requests))
    async with _client(base_url, concurrency) as client:

        async def worker() -> None:
            for index in next_index:
                body = request_body(api, model=model, prompt=PROMPTS[index % len(PROMPTS)], max_tokens=max_tokens)
                cell.requests.append(await stream_one(client, api, body))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        cell.wall_seconds = time.perf_counter() - started
    return cell


async def run_for(
    base_url: str, *, api: Api, model: str, concurrency: int, seconds: float, max_tokens: int
) -> CellResult:
    """Keep ``concurrency`` streams going for ``seconds`` (requests under way then are let finish)."""
    cell = CellResult(api=api, concurrency=concurrency)
    deadline = time.perf_counter() + seconds
    async with _client(base_url, concurrency) as client:

        async def worker(offset: int) -> None:
            index = offset
            while time.perf_counter() < deadline:
                body = request_body(api, model=model, prompt=PROMPTS[index % len(PROMPTS)], max_tokens=max_tokens)
                cell.requests.append(await stream_one(client, api, body))
                index += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        cell.wall_seconds = time.perf_counter() - started
    return cell


#: Suffix of the latency key for probes sent on a new connection each (as the kubelet sends them).
NEW_CONNECTION = " (new connection)"


def probe(base_url: str, seconds: float, paths: list[str], *, interval: float = 0.01) -> dict[str, Any]:
    """GET ``paths`` in turn for ``seconds``, each on a kept-alive connection and on a new connection;
    latencies in seconds per path (the new-connection ones under ``path + NEW_CONNECTION``).

    The kept-alive connection measures how long the server takes to answer; a new connection per probe
    is what the kubelet does (its HTTP probes never reuse a connection), so accepting is part of it. Any
    status other than 200 is counted under ``failures`` (a probe that fails under load is what we look for).
    """
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    kept = http.client.HTTPConnection(host, port, timeout=30)
    keys = [key for path in paths for key in (path, path + NEW_CONNECTION)]
    latencies: dict[str, list[float]] = {key: [] for key in keys}
    failures: dict[str, int] = dict.fromkeys(keys, 0)
    deadline = time.perf_counter() + seconds
    turn = 0
    while time.perf_counter() < deadline:
        key = keys[turn % len(keys)]
        turn += 1
        fresh = key.endswith(NEW_CONNECTION)
        connection = http.client.HTTPConnection(host, port, timeout=30) if fresh else kept
        started = time.perf_counter()
        try:
            connection.request("GET", key.removesuffix(NEW_CONNECTION))
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            failures[key] += 1
            connection.close()
            time.sleep(interval)
            continue
        latencies[key].append(time.perf_counter() - started)
        if fresh:
            connection.close()
        if response.status != 200:
            failures[key] += 1
        time.sleep(interval)
    kept.close()
    return {"latencies": latencies, "failures": failures}


if __name__ == "__main__":
    if len(sys.argv) < 5 or sys.argv[1] != "probe":
        sys.exit("usage: loadgen.py probe BASE_URL SECONDS PATH [PATH ...]")
    print(json.dumps(probe(sys.argv[2], float(sys.argv[3]), sys.argv[4:])))
