"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` with a matching status.

vLLM's serving layer already answers in this shape (``code`` is the HTTP status, ``type`` an
OpenAI-SDK-style class name); everything the runtime adds answers the same way, and the exception
handlers here make sure no request ever sees a traceback or an HTML error page.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

logger = logging.getLogger(__name__)

#: The error ``type`` per status, named like the OpenAI SDK's exception classes.
ERROR_TYPES: dict[int, str] = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestTooLargeError",
    415: "UnsupportedMediaTypeError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    501: "NotImplementedError",
    503: "ServiceUnavailableError",
}


class ApiError(Exception):
    """An error the client should see as is: raise it anywhere in a route."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers


def error_type(status: int) -> str:
    """The ``type`` for a status; unknown 4xx are client errors, unknown 5xx server errors."""
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "BadRequestError" if status < 500 else "InternalServerError"


def error_body(status: int, message: str, *, param: str | None = None) -> dict[str, Any]:
    """The JSON body of an error response."""
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": status}}


def error_response(
    status: int, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, message, param=param), status_code=status, headers=headers)


def describe_validation_errors(errors: Sequence[Any], *, limit: int = 5) -> tuple[str, str | None]:
    """A short message and the first offending parameter from pydantic-style error dicts.

    Pydantic repeats the whole input in every entry; only the location and the reason are kept, so a
    huge malformed body cannot produce a huge error.
    """
    parts: list[str] = []
    param: str | None = None
    for err in errors[:limit]:
        loc = [str(p) for p in err.get("loc", ()) if p != "body" and not _internal_segment(str(p))]
        where = ".".join(loc) or "body"
        if param is None and loc:
            param = where
        parts.append(f"{where}: {err.get('msg', 'invalid value')}")
    more = len(errors) - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "Invalid request: " + "; ".join(parts or ["validation failed"]), param


def _internal_segment(segment: str) -> bool:
    """Pydantic union/wrapper markers such as ``function-wrap[...]`` or ``str`` mean nothing to a client."""
    return any(c in segment for c in "[](){}") or segment in {"str", "int", "float", "list", "dict", "bool"}


async def _validation_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    message, param = describe_validation_errors(exc.errors())
    return error_response(400, message, param=param)


async def _http_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and message == "Not Found":
        message = f"No route {request.method} {request.url.path}; see /docs for the API"
    return error_response(exc.status_code, message, headers=dict(exc.headers or {}))


async def _api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, param=exc.param, headers=exc.headers)


async def _unexpected_handler(request: Request, exc: Exception) -> Response:
    logger.exception("Unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, f"Internal server error ({type(exc).__name__}); see the server log")


def install_error_handlers(app: FastAPI) -> None:
    """Route every failure through the OpenAI error shape."""
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(HTTPException, _http_handler)
    app.add_exception_handler(ApiError, _api_error_handler)
    app.add_exception_handler(Exception, _unexpected_handler)
