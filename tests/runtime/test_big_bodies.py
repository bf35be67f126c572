"""A 10 MB body gets a readable 413, with a Content-Length or chunked, from urllib and from httpx.

urllib sends ``Connection: close``: if the server answered and closed with the body still unread, the
kernel would reset the connection and urllib would raise ConnectionResetError (or BrokenPipeError)
instead of reading the answer. That is what happened before the middleware read and dropped the rest.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.runtime.conftest import SMOLLM2, Server

pytestmark = pytest.mark.runtime

#: Over the default NIM_MAX_REQUEST_BYTES (8 MiB), well under what the server reads and drops (64 MiB).
TEN_MB = 10 * 1024 * 1024
ROUTES = ["/v1/chat/completions", "/v1/completions", "/inference/chat_completion"]


def big_body() -> bytes:
    return json.dumps({"model": SMOLLM2, "prompt": "y" * TEN_MB}).encode()


def in_pieces(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """An iterable body, which both clients send chunked (no Content-Length)."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def assert_413(status: int, raw: bytes) -> None:
    assert status == 413, raw[:300]
    error: dict[str, Any] = json.loads(raw)["error"]
    assert error["code"] == 413
    assert error["type"] == "RequestTooLargeError"
    assert "limit" in error["message"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path", ROUTES)
def test_urllib_reads_the_413(smollm2: Server, path: str, chunked: bool) -> None:
    body = big_body()
    headers = {"content-type": "application/json"}
    if chunked:
        headers["transfer-encoding"] = "chunked"
    request = urllib.request.Request(smollm2.url + path, data=in_pieces(body) if chunked else body, headers=headers)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=60)
    assert_413(caught.value.code, caught.value.read())


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path", ROUTES)
def test_httpx_reads_the_413_and_keeps_the_connection(smollm2: Server, path: str, chunked: bool) -> None:
    body = big_body()
    with httpx.Client(base_url=smollm2.url, timeout=60) as client:
        response = client.post(path, content=in_pieces(body) if chunked else body)
        assert_413(response.status_code, response.content)
        # The body was read to its end, so the same connection serves the next request.
        assert client.get("/v1/health/ready").status_code == 200
