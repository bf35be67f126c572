"""The OpenAI-compatible API: thin routes over vLLM's serving objects (see :mod:`nim_runtime.engine`).

The routes read the body themselves (so malformed JSON and wrong types get our 400, not FastAPI's 422),
add the NIM shape of ``/v1/models``, and check images before the engine sees them. The Responses API
(``client.responses.create``, the OpenAI SDK's primary API) is vLLM's own, as in ``vllm serve``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from nim_runtime.content import check_chat_images
from nim_runtime.context import read_json_object, require_engine, runtime
from nim_runtime.errors import ApiError

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    body = await read_json_object(request)
    engine = require_engine(request)
    manifest = runtime(request).plan.manifest
    check_chat_images(body.get("messages"), multimodal=manifest.multimodal, model=str(body.get("model")))
    return await engine.chat(body, request)


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    body = await read_json_object(request)
    return await require_engine(request).completion(body, request)


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    body = await read_json_object(request)
    return await require_engine(request).embedding(body, request)


@router.post("/tokenize")
async def tokenize(request: Request) -> Response:
    body = await read_json_object(request)
    return await require_engine(request).tokenize(body, request)


@router.post("/detokenize")
async def detokenize(request: Request) -> Response:
    body = await read_json_object(request)
    return await require_engine(request).detokenize(body, request)


def _check_response_input(items: Any) -> None:
    """vLLM's Responses layer indexes into a message's content list: an empty one answered a 500."""
    if not isinstance(items, list):
        return
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("content") == []:
            raise ApiError(
                400, f"input.{i}.content is empty: give a string or at least one part", param=f"input.{i}.content"
            )


@router.post("/v1/responses")
async def create_response(request: Request) -> Response:
    body = await read_json_object(request)
    _check_response_input(body.get("input"))
    return await require_engine(request).serve("/v1/responses", body, request)


@router.get("/v1/responses/{response_id}")
async def retrieve_response(
    request: Request, response_id: str, starting_after: int | None = None, stream: bool = False
) -> Response:
    engine = require_engine(request)
    return await engine.retrieve_response(response_id, starting_after=starting_after, stream=stream)


@router.post("/v1/responses/{response_id}/cancel")
async def cancel_response(request: Request, response_id: str) -> Response:
    return await require_engine(request).cancel_response(response_id)


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """NIM's model list: ``root`` is the served name (not a local path) and ``owned_by`` is "system"."""
    return {"object": "list", "data": await _model_cards(request)}


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(request: Request, model_id: str) -> dict[str, Any]:
    """One entry of the model list (the OpenAI SDK's ``models.retrieve``); ids may hold slashes."""
    for card in await _model_cards(request):
        if card["id"] == model_id:
            return card
    raise ApiError(404, f"The model {model_id!r} does not exist; GET /v1/models lists the served ones", param="model")


async def _model_cards(request: Request) -> list[dict[str, Any]]:
    cards = await require_engine(request).model_cards()
    for card in cards:
        card["owned_by"] = "system"
        if card.get("parent") is None:
            card["root"] = card["id"]
    return cards
