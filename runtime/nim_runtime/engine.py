"""The one module that touches vLLM (pinned to vLLM 0.32.0).

It turns our configuration into vLLM's own server arguments (parsed by vLLM's parser, so
``NIM_PASSTHROUGH_ARGS`` accepts exactly what ``vllm serve`` accepts), starts the ``AsyncLLM`` engine
client, and builds vLLM's OpenAI serving objects with vLLM's own ``init_app_state``, so chat templates,
tool calling, structured outputs, streaming and logprobs are vLLM's. What it exposes is small: one
:class:`Engine` whose methods take a parsed JSON body and answer a Starlette response. Every API
``vllm serve`` offers for a model goes through vLLM's serving object for it (chat, completions,
Responses, embeddings, score and rerank, pooling, classification, tokenize, LoRA adapters); an API the
loaded model has no serving object for answers an OpenAI-shaped 400 that says so.

Import it only after :func:`nim_runtime.config.apply_engine_environment` (vLLM reads the environment
at import time) and never at import time of a test module (the CPU platform spawns processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from argparse import Namespace
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic
from fastapi import Request
from pydantic.json_schema import JsonSchemaMode
from starlette.datastructures import State
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from vllm import envs
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.launchers.api_server.app_state import init_app_state
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest, ResponsesResponse
from vllm.entrypoints.pooling.classify.protocol import ClassificationRequest
from vllm.entrypoints.pooling.embed.protocol import EmbeddingRequest
from vllm.entrypoints.pooling.pooling.protocol import PoolingRequest
from vllm.entrypoints.pooling.scoring.protocol import RerankRequest, ScoreRequest
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest
from vllm.entrypoints.serve.tokenize.protocol import DetokenizeRequest, TokenizeRequest
from vllm.entrypoints.serve.utils.api_utils import listen_for_disconnect
from vllm.exceptions import VLLMClientError
from vllm.usage.usage_lib import UsageContext
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError

from nim_runtime.errors import describe_validation_errors, error_response
from nim_runtime.frontend import unapplied_options
from nim_runtime.heartbeat import answered_within
from nim_runtime.niceness import run_niced

logger = logging.getLogger(__name__)

VLLM_RELEASE = "0.32.0"

#: Seconds between two engine heartbeats (at most; a short stall timeout probes more often).
HEARTBEAT_SECONDS = 5.0


@dataclass(frozen=True)
class _Api:
    """One of vLLM's serving APIs: its title in errors, its serving object and how to call it."""

    title: str
    #: The attribute of vLLM's app state holding the serving object; None there: the model lacks the API.
    handler: str
    #: The method to call with (request, raw request); None: the serving object itself is called.
    method: str | None
    request: pydantic.TypeAdapter[Any]


#: Keyed by the route that serves them (see :meth:`Engine.request_schemas`).
APIS: dict[str, _Api] = {
    "/v1/chat/completions": _Api("Chat Completions", "openai_serving_chat", "create_chat_completion",
                                 pydantic.TypeAdapter(ChatCompletionRequest)),
    "/v1/completions": _Api("Completions", "openai_serving_completion", "create_completion",
                            pydantic.TypeAdapter(CompletionRequest)),
    "/v1/responses": _Api("Responses", "openai_serving_responses", "create_responses",
                          pydantic.TypeAdapter(ResponsesRequest)),
    "/v1/embeddings": _Api("Embeddings", "serving_embedding", None, pydantic.TypeAdapter(EmbeddingRequest)),
    "/score": _Api("Score", "serving_scores", None, pydantic.TypeAdapter(ScoreRequest)),
    "/rerank": _Api("Rerank", "serving_scores", None, pydantic.TypeAdapter(RerankRequest)),
    "/pooling": _Api("Pooling", "serving_pooling", None, pydantic.TypeAdapter(PoolingRequest)),
    "/classify": _Api("Classification", "serving_classification", None, pydantic.TypeAdapter(ClassificationRequest)),
    "/tokenize": _Api("Tokenize", "serving_tokenization", "create_tokenize", pydantic.TypeAdapter(TokenizeRequest)),
    "/detokenize": _Api("Detokenize", "serving_tokenization", "create_detokenize",
                        pydantic.TypeAdapter(DetokenizeRequest)),
}  # fmt: skip
_load_lora_request: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(LoadLoRAAdapterRequest)
_unload_lora_request: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(UnloadLoRAAdapterRequest)


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
    if unapplied := unapplied_options(argv, vars(args)):
        raise EngineArgsError(
            f"vLLM server options {', '.join(unapplied)} come from outside the NIM_PASSTHROUGH_ARGS line (a "
            "--config file?), where nim-runtime could not check them at start; set them in NIM_PASSTHROUGH_ARGS"
        )
    return args


class Engine:
    """A running vLLM engine and its OpenAI serving objects."""

    def __init__(self, client: AsyncLLM, state: State, args: Namespace, tasks: Sequence[str] = ()) -> None:
        self._client = client
        self._state = state
        self._tasks = tuple(tasks)
        self._hung = False
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
        return cls(client, state, args, tasks)

    @property
    def dead(self) -> bool:
        """Whether the engine core is gone (vLLM's ``AsyncLLM.errored``: its monitor thread saw the engine
        core process exit, or the output handler failed) or hung (see :meth:`heartbeat`). Flag reads,
        safe to call from every probe."""
        return self._hung or bool(self._client.errored)

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
    def tasks(self) -> tuple[str, ...]:
        """What the loaded model does, in vLLM's words ("generate", "embed", "classify"...)."""
        return tuple(self._tasks)

    @property
    def supports_chat(self) -> bool:
        return self.supports("/v1/chat/completions")

    @property
    def supports_embeddings(self) -> bool:
        return self.supports("/v1/embeddings")

    def supports(self, route: str) -> bool:
        """Whether vLLM built a serving object for the API of ``route`` (a key of :data:`APIS`)."""
        return getattr(self._state, APIS[route].handler, None) is not None

    async def serve(self, route: str, body: dict[str, Any], raw: Request) -> Response:
        """Answer a POST to ``route`` (a key of :data:`APIS`) through vLLM's serving object for it."""
        api = APIS[route]
        handler = getattr(self._state, api.handler, None)
        if handler is None:
            return self._unsupported(api.title)
        request = _parse(api.request, body)
        if isinstance(request, Response):
            return request
        call = handler if api.method is None else getattr(handler, api.method)
        if route == "/v1/responses":
            return await _call(lambda: _responses_result(call(request, raw)), raw)
        return await _call(lambda: call(request, raw), raw)

    async def chat(self, body: dict[str, Any], raw: Request) -> Response:
        return await self.serve("/v1/chat/completions", body, raw)

    async def completion(self, body: dict[str, Any], raw: Request) -> Response:
        return await self.serve("/v1/completions", body, raw)

    async def embedding(self, body: dict[str, Any], raw: Request) -> Response:
        return await self.serve("/v1/embeddings", body, raw)

    async def tokenize(self, body: dict[str, Any], raw: Request) -> Response:
        return await self.serve("/tokenize", body, raw)

    async def detokenize(self, body: dict[str, Any], raw: Request) -> Response:
        return await self.serve("/detokenize", body, raw)

    async def retrieve_response(self, response_id: str, *, starting_after: int | None, stream: bool) -> Response:
        """A stored Response by id (vLLM keeps them only with ``VLLM_ENABLE_RESPONSES_API_STORE=1``)."""
        handler = getattr(self._state, APIS["/v1/responses"].handler, None)
        if handler is None:
            return self._unsupported("Responses")
        result = await handler.retrieve_responses(response_id, starting_after=starting_after, stream=stream)
        return _to_response(_shape_responses(result))

    async def cancel_response(self, response_id: str) -> Response:
        """Cancel a background Response (one created with ``background: true`` and stored)."""
        handler = getattr(self._state, APIS["/v1/responses"].handler, None)
        if handler is None:
            return self._unsupported("Responses")
        return _to_response(_shape_responses(await handler.cancel_responses(response_id)))

    async def load_lora_adapter(self, body: dict[str, Any]) -> Response:
        """Load a LoRA adapter at run time; allowed only as ``vllm serve`` allows it (see _lora_refusal)."""
        if (refusal := self._lora_refusal()) is not None:
            return refusal
        request = _parse(_load_lora_request, body)
        if isinstance(request, Response):
            return request
        result = await self._state.openai_serving_models.load_lora_adapter(request)
        return PlainTextResponse(result) if isinstance(result, str) else _to_response(result)

    async def unload_lora_adapter(self, body: dict[str, Any]) -> Response:
        if (refusal := self._lora_refusal()) is not None:
            return refusal
        request = _parse(_unload_lora_request, body)
        if isinstance(request, Response):
            return request
        result = await self._state.openai_serving_models.unload_lora_adapter(request)
        return PlainTextResponse(result) if isinstance(result, str) else _to_response(result)

    def _lora_refusal(self) -> Response | None:
        """Why LoRA adapters cannot change now, or None.

        ``vllm serve`` has these routes only with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` set (anyone who can
        reach the port could load code-adjacent files from the pod's disk), so they are 404 otherwise, as
        there, but saying what to set. The engine must also have been started with ``--enable-lora``.
        """
        if not envs.VLLM_ALLOW_RUNTIME_LORA_UPDATING:
            return error_response(
                404,
                "Loading LoRA adapters at run time is disabled; set VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 and start "
                "with --enable-lora in NIM_PASSTHROUGH_ARGS",
            )
        if self._client.vllm_config.lora_config is None:
            return error_response(
                400, "The engine was started without LoRA support; add --enable-lora to NIM_PASSTHROUGH_ARGS"
            )
        return None

    def _unsupported(self, api: str) -> Response:
        tasks = ", ".join(self._tasks) or "none"
        return error_response(
            400, f"The model {self.served_names[0]!r} does not support the {api} API (it serves: {tasks})"
        )

    def request_schemas(self) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """JSON schemas of the request bodies vLLM validates, per route, and their shared definitions.

        The routes read their bodies themselves (for our 400s), so FastAPI cannot see these; without them
        ``/openapi.json`` would describe every inference route as body-less, useless to clients and to
        schema-driven fuzzing. Routes the loaded model does not serve are left out. References point into
        ``#/components/schemas``.
        """
        adapters = {route: api.request for route, api in APIS.items() if self.supports(route)}
        inputs: list[tuple[str, JsonSchemaMode, pydantic.TypeAdapter[Any]]] = [
            (route, "validation", adapter) for route, adapter in adapters.items()
        ]
        schemas, definitions = pydantic.TypeAdapter.json_schemas(inputs, ref_template="#/components/schemas/{model}")
        return {route: schemas[(route, "validation")] for route in adapters}, definitions.get("$defs", {})

    async def model_cards(self) -> list[dict[str, Any]]:
        """vLLM's model list entries (id, max_model_len, root, parent, permission) as JSON; loaded LoRA
        adapters are among them."""
        models = await self._state.openai_serving_models.show_available_models()
        return [card.model_dump(mode="json") for card in models.data]

    async def heartbeat(self, *, stall_timeout: float) -> None:
        """Until cancelled, ask the engine core a trivial question now and then; mark it hung if it does
        not answer within ``stall_timeout`` seconds.

        vLLM's ``errored`` flag covers an engine core process that exited, not one that is alive but stuck
        (a deadlock, a wedged device, a stopped process): such a pod would stay Ready while every request
        hangs. The question (``is_sleeping``) travels the engine core's input queue, which it reads
        between two steps, so it costs nothing on the token path and an answer proves the loop turns.
        Time this process spent suspended does not count against the engine (see :mod:`nim_runtime.heartbeat`).
        """
        every = min(HEARTBEAT_SECONDS, stall_timeout / 3)
        while not self.dead:
            await asyncio.sleep(every)
            try:
                answered = await answered_within(self._client.is_sleeping(), stall_timeout)
            except EngineDeadError:
                return  # the errored flag says so already
            if not answered:
                logger.error("The vLLM engine core did not answer a heartbeat within %.0f s: it is hung", stall_timeout)
                self._hung = True
                return


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


async def _responses_result(work: Awaitable[Any]) -> Any:
    return _shape_responses(await work)


def _shape_responses(result: Any) -> Any:
    """vLLM's Responses results as HTTP answers: JSON with the protocol's field aliases, and a stream as
    server-sent events that carry their event type (the OpenAI SDK dispatches on it)."""
    if isinstance(result, ResponsesResponse):
        return JSONResponse(result.model_dump(mode="json", by_alias=True))
    if isinstance(result, AsyncIterator):
        return StreamingResponse(_response_events(result), media_type="text/event-stream")
    return result


async def _response_events(events: AsyncIterator[Any]) -> AsyncIterator[str]:
    async for event in events:
        yield f"event: {getattr(event, 'type', 'message')}\ndata: {event.model_dump_json(by_alias=True)}\n\n"


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
