"""The one module that touches vLLM (pinned to vLLM 0.32.0).

It turns our configuration into vLLM's own server arguments (parsed by vLLM's parser, so
``NIM_PASSTHROUGH_ARGS`` accepts exactly what ``vllm serve`` accepts), starts the ``AsyncLLM`` engine
client, and builds vLLM's OpenAI serving objects with vLLM's own ``init_app_state``, so chat templates,
tool calling, structured outputs, streaming and logprobs are vLLM's. What it exposes is small: one
:class:`Engine` whose methods take a parsed JSON body and answer a Starlette response.

Import it only after :func:`nim_runtime.config.apply_engine_environment` (vLLM reads the environment
at import time) and never at import time of a test module (the CPU platform spawns processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from argparse import Namespace
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pydantic
from fastapi import Request
from pydantic.json_schema import JsonSchemaMode
from starlette.datastructures import State
from starlette.responses import JSONResponse, Response, StreamingResponse
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.launchers.api_server.app_state import init_app_state
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.pooling.embed.protocol import EmbeddingRequest
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.entrypoints.serve.tokenize.protocol import DetokenizeRequest, TokenizeRequest
from vllm.entrypoints.serve.utils.api_utils import listen_for_disconnect
from vllm.exceptions import VLLMClientError
from vllm.usage.usage_lib import UsageContext
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError

from nim_runtime.errors import describe_validation_errors, error_response
from nim_runtime.niceness import run_niced

logger = logging.getLogger(__name__)

VLLM_RELEASE = "0.32.0"

_chat_request: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ChatCompletionRequest)
_completion_request: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(CompletionRequest)
_embedding_request: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(EmbeddingRequest)
_tokenize_request: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(TokenizeRequest)
_detokenize_request: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(DetokenizeRequest)


class EngineArgsError(ValueError):
    """The engine arguments (ours plus NIM_PASSTHROUGH_ARGS) are not valid vLLM arguments."""


def build_server_args(argv: Sequence[str]) -> Namespace:
    """Parse ``vllm serve``-style arguments with vLLM's own parser; later flags override earlier ones."""
    parser = make_arg_parser(FlexibleArgumentParser(prog="nim-runtime (vLLM arguments)"))
    try:
        args = parser.parse_args(list(argv))
        validate_parsed_serve_args(args)
    except SystemExit as exc:  # argparse reports on stderr, then exits
        raise EngineArgsError(f"invalid vLLM arguments {list(argv)!r} (see the message above)") from exc
    except (TypeError, ValueError) as exc:
        raise EngineArgsError(f"invalid vLLM arguments: {exc}") from exc
    assert isinstance(args, Namespace)
    return args


class Engine:
    """A running vLLM engine and its OpenAI serving objects."""

    def __init__(self, client: AsyncLLM, state: State, args: Namespace) -> None:
        self._client = client
        self._state = state
        self.args = args
        self.max_model_len: int = client.model_config.max_model_len
        self.served_names: list[str] = list(args.served_model_name or [args.model])

    @classmethod
    async def start(cls, args: Namespace, *, niceness: int = 0, default_max_tokens: int | None = None) -> Engine:
        """Start the engine core (a child process) and build the serving objects; takes seconds.

        The engine processes run ``niceness`` below this process's CPU priority (see
        :mod:`nim_runtime.niceness`). ``default_max_tokens`` is what a request without max_tokens gets.
        """
        # Building the config and starting the engine core block for seconds: off the event loop, so
        # health probes keep answering. AsyncLLM starts its output handler lazily when built off-loop.
        client = await run_niced(lambda: _create_client(args), niceness)
        try:
            tasks = await client.get_supported_tasks()
            state = State()
            await init_app_state(client, state, args, tasks)
            if default_max_tokens is not None:
                _set_default_max_tokens(state, default_max_tokens)
        except BaseException:
            client.shutdown()
            raise
        logger.info("vLLM %s engine ready; tasks: %s", VLLM_RELEASE, ", ".join(tasks))
        return cls(client, state, args)

    @property
    def dead(self) -> bool:
        """Whether the engine core is gone (vLLM's ``AsyncLLM.errored``: its monitor thread saw the engine
        core process exit, or the output handler failed). A flag read, safe to call from every probe."""
        return bool(self._client.errored)

    async def shutdown(self) -> None:
        """Stop the engine core; call on the event loop the engine runs on.

        vLLM's own ``shutdown`` first tears down the engine core connection, which makes the still-running
        output handler task fail with ``EngineDeadError`` and log it as an ERROR with a traceback, on
        every normal exit. Cancelling that task first (vLLM cancels it anyway, only later) keeps a clean
        SIGTERM clean; a real engine death has been logged by then.
        """
        handler = getattr(self._client, "output_handler", None)
        if isinstance(handler, asyncio.Task) and not handler.done():
            handler.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await handler
        await asyncio.to_thread(self._client.shutdown)

    @property
    def supports_chat(self) -> bool:
        return getattr(self._state, "openai_serving_chat", None) is not None

    @property
    def supports_embeddings(self) -> bool:
        return getattr(self._state, "serving_embedding", None) is not None

    async def chat(self, body: dict[str, Any], raw: Request) -> Response:
        handler = getattr(self._state, "openai_serving_chat", None)
        if handler is None:
            return _unsupported("Chat Completions", self.served_names[0])
        request = _parse(_chat_request, body)
        if isinstance(request, Response):
            return request
        return await _call(lambda: handler.create_chat_completion(request, raw), raw)

    async def completion(self, body: dict[str, Any], raw: Request) -> Response:
        handler = getattr(self._state, "openai_serving_completion", None)
        if handler is None:
            return _unsupported("Completions", self.served_names[0])
        request = _parse(_completion_request, body)
        if isinstance(request, Response):
            return request
        return await _call(lambda: handler.create_completion(request, raw), raw)

    async def embedding(self, body: dict[str, Any], raw: Request) -> Response:
        handler = getattr(self._state, "serving_embedding", None)
        if handler is None:
            return _unsupported("Embeddings", self.served_names[0])
        request = _parse(_embedding_request, body)
        if isinstance(request, Response):
            return request
        return await _call(lambda: handler(request, raw), raw)

    async def tokenize(self, body: dict[str, Any], raw: Request) -> Response:
        request = _parse(_tokenize_request, body)
        if isinstance(request, Response):
            return request
        return await _call(lambda: self._state.serving_tokenization.create_tokenize(request, raw), raw)

    async def detokenize(self, body: dict[str, Any], raw: Request) -> Response:
        request = _parse(_detokenize_request, body)
        if isinstance(request, Response):
            return request
        return await _call(lambda: self._state.serving_tokenization.create_detokenize(request, raw), raw)

    def request_schemas(self) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """JSON schemas of the request bodies vLLM validates, per route, and their shared definitions.

        The routes read their bodies themselves (for our 400s), so FastAPI cannot see these; without them
        ``/openapi.json`` would describe every inference route as body-less, useless to clients and to
        schema-driven fuzzing. Routes the loaded model does not serve are left out. References point into
        ``#/components/schemas``.
        """
        adapters = {"/tokenize": _tokenize_request, "/detokenize": _detokenize_request}
        if self.supports_chat:
            adapters |= {"/v1/chat/completions": _chat_request}
        if getattr(self._state, "openai_serving_completion", None) is not None:
            adapters |= {"/v1/completions": _completion_request}
        if self.supports_embeddings:
            adapters |= {"/v1/embeddings": _embedding_request}
        inputs: list[tuple[str, JsonSchemaMode, pydantic.TypeAdapter[Any]]] = [
            (route, "validation", adapter) for route, adapter in adapters.items()
        ]
        schemas, definitions = pydantic.TypeAdapter.json_schemas(inputs, ref_template="#/components/schemas/{model}")
        return {route: schemas[(route, "validation")] for route in adapters}, definitions.get("$defs", {})

    async def model_cards(self) -> list[dict[str, Any]]:
        """vLLM's model list entries (id, max_model_len, root, parent, permission) as JSON."""
        models = await self._state.openai_serving_models.show_available_models()
        return [card.model_dump(mode="json") for card in models.data]


def _set_default_max_tokens(state: State, max_tokens: int) -> None:
    """Give every generating serving object a default max_tokens that requests may exceed.

    vLLM reads a default from the model's generation_config.json (``max_new_tokens``) into each serving
    object's ``default_sampling_params``, and uses it only for requests that set none; the same value
    through ``--override-generation-config`` would instead cap every request. So it is set where vLLM
    keeps the model's default.
    """
    for serving in state._state.values():  # Starlette keeps a State's attributes in this dict
        defaults = getattr(serving, "default_sampling_params", None)
        if isinstance(defaults, dict):
            defaults["max_tokens"] = max_tokens


def _create_client(args: Namespace) -> AsyncLLM:
    engine_args = AsyncEngineArgs.from_cli_args(args)
    vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    return AsyncLLM.from_vllm_config(
        vllm_config=vllm_config,
        usage_context=UsageContext.OPENAI_API_SERVER,
        enable_log_requests=engine_args.enable_log_requests,
        disable_log_stats=engine_args.disable_log_stats,
    )


def _parse(adapter: pydantic.TypeAdapter[Any], body: dict[str, Any]) -> Any:
    """The vLLM request model for ``body``, or a 400 response naming the offending field."""
    try:
        return adapter.validate_python(body)
    except pydantic.ValidationError as exc:
        message, param = describe_validation_errors(exc.errors(include_input=False))
        return error_response(400, message, param=param)
    except (ValueError, VLLMClientError) as exc:
        # vLLM's model validators raise their own errors, and VLLMValidationError (e.g. tool_choice without
        # tools) is no ValueError, so pydantic lets it through unwrapped: found by fuzzing, was a 500.
        err = create_error_response(exc)
        return error_response(err.error.code, err.error.message, param=err.error.param)
    except (TypeError, AttributeError, KeyError) as exc:
        # A "before" validator reading a field of the wrong type (``structured_outputs: true`` makes one
        # call ``.get`` on a bool): the body is at fault, not the server. Found by fuzzing, was a 500.
        return error_response(400, f"Invalid request: a field has the wrong type ({type(exc).__name__}: {exc})")


def _unsupported(api: str, model: str) -> Response:
    return error_response(400, f"The model {model!r} does not support the {api} API")


async def _call(work: Callable[[], Awaitable[Any]], raw: Request) -> Response:
    """Run a serving call, cancelled if the client goes away first, and shape whatever it returns."""
    task = asyncio.ensure_future(work())
    watcher = asyncio.ensure_future(listen_for_disconnect(raw))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task not in done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return Response(status_code=499)
    try:
        result = task.result()
    except EngineDeadError:
        # vLLM maps this to a 500; the server is unavailable rather than broken, and exits shortly.
        return error_response(503, "The inference engine died; the server is exiting and will be restarted")
    except Exception as exc:  # vLLM raises for some bad input instead of returning an error
        err = create_error_response(exc)
        if err.error.code >= 500:
            logger.exception("Engine call failed")
        return error_response(err.error.code, err.error.message, param=err.error.param)
    return _to_response(result)


def _to_response(result: Any) -> Response:
    match result:
        case Response():
            return result
        case ErrorResponse():
            return error_response(result.error.code, result.error.message, param=result.error.param)
        case pydantic.BaseModel():
            return JSONResponse(result.model_dump(mode="json"))
        case _ if isinstance(result, AsyncIterator):
            return StreamingResponse(result, media_type="text/event-stream")
    raise TypeError(f"unexpected result from vLLM's serving layer: {type(result).__name__}")
