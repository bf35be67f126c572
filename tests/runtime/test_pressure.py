"""The runtime under pressure, on a tiny model whose engine runs SMALL_BATCH sequences at once.

More requests than the batch queue in the engine and all complete; clients that hang up mid-stream
have their work aborted (the engine's counters return to zero well before the work could have
finished); and the runtime admits at most NIM_MAX_QUEUED_REQUESTS at once, answering 429 with
Retry-After beyond that instead of queueing without bound.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import httpx
import pytest

from tests.runtime.conftest import SMALL_BATCH, SMALL_QUEUE, TINY, Server, metric

pytestmark = pytest.mark.runtime

#: Seconds to wait for anything on a machine a benchmark may be loading.
PATIENCE = 120
#: Long enough that a stream never ends on its own during a test (the context is 1024 tokens).
LONG = 1000


def wait_for(condition: Callable[[], bool], what: str, timeout: float = PATIENCE) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def engine_idle(server: Server) -> bool:
    return (
        metric(server, "vllm:num_requests_running") == 0
        and metric(server, "vllm:num_requests_waiting") == 0
        and metric(server, "nim_runtime_inference_requests_in_flight") == 0
    )


def test_more_requests_than_the_batch_all_complete(tiny_small_batch: Server) -> None:
    request = {"model": TINY, "prompt": "Count:", "max_tokens": 16, "ignore_eos": True}

    def one(_: int) -> httpx.Response:
        return httpx.post(f"{tiny_small_batch.url}/v1/completions", json=request, timeout=PATIENCE)

    with ThreadPoolExecutor(SMALL_QUEUE) as pool:
        responses = list(pool.map(one, range(SMALL_QUEUE)))
    assert [r.status_code for r in responses] == [200] * SMALL_QUEUE
    assert all(r.json()["usage"]["completion_tokens"] == 16 for r in responses)
    wait_for(lambda: engine_idle(tiny_small_batch), "the engine to go idle")


@pytest.fixture
def open_streams(tiny_small_batch: Server) -> Iterator[list[httpx.Response]]:
    """SMALL_QUEUE long streams, all admitted (SMALL_BATCH running, the rest queued in the engine).

    The caller hangs up on them: leaving the block closes every connection mid-stream.
    """
    request = {"model": TINY, "prompt": "Once", "max_tokens": LONG, "ignore_eos": True, "stream": True}
    with ExitStack() as stack:
        client = stack.enter_context(httpx.Client(timeout=PATIENCE, limits=httpx.Limits(max_connections=20)))
        streams: list[httpx.Response] = []
        lock = threading.Lock()

        def open_one(_: int) -> None:
            built = client.build_request("POST", f"{tiny_small_batch.url}/v1/completions", json=request)
            response = client.send(built, stream=True)
            with lock:
                stack.callback(response.close)
                streams.append(response)

        with ThreadPoolExecutor(SMALL_QUEUE) as pool:
            list(pool.map(open_one, range(SMALL_QUEUE)))
        yield streams


def test_queue_is_bounded_and_hung_up_streams_are_aborted(
    tiny_small_batch: Server, open_streams: list[httpx.Response]
) -> None:
    server = tiny_small_batch
    tokens_before = metric(server, "vllm:generation_tokens_total")
    assert [s.status_code for s in open_streams] == [200] * SMALL_QUEUE
    wait_for(lambda: metric(server, "nim_runtime_inference_requests_in_flight") == SMALL_QUEUE, "all admitted")
    assert metric(server, "vllm:num_requests_running") <= SMALL_BATCH

    refused = httpx.post(f"{server.url}/v1/completions", json={"model": TINY, "prompt": "x"}, timeout=PATIENCE)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    error = refused.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("RateLimitError", 429)
    assert httpx.get(f"{server.url}/v1/health/ready", timeout=PATIENCE).status_code == 200

    first = open_streams[0]
    assert next(first.iter_lines()).startswith("data: ")  # streams are flowing
    for stream in open_streams:
        stream.close()  # the client hangs up mid-stream
    wait_for(lambda: engine_idle(server), "aborted requests to leave the engine")
    generated = metric(server, "vllm:generation_tokens_total") - tokens_before
    # Unaborted, the streams would have generated SMALL_QUEUE * LONG tokens before the engine idled.
    assert generated < SMALL_QUEUE * LONG / 2, generated

    normal = httpx.post(
        f"{server.url}/v1/completions", json={"model": TINY, "prompt": "Hi", "max_tokens": 4}, timeout=PATIENCE
    )
    assert normal.status_code == 200
