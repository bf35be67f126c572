"""vLLM's own APIs beyond OpenAI's, at the paths ``vllm serve`` uses: score, rerank, pooling,
classification and LoRA adapters.

Score and rerank run on embedding models (cosine similarity of the two texts' embeddings) and on
cross-encoders; pooling on any pooling model; classification on classifiers. The routes always exist:
a model that cannot do one answers an OpenAI-shaped 400 naming what it does serve, rather than a 404 a
client would read as a wrong URL. LoRA adapters change at run time only as vLLM allows it (see
:meth:`nim_runtime.engine.Engine.load_lora_adapter`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from nim_runtime.context import read_json_object, require_engine

router = APIRouter()


async def _serve(request: Request, route: str) -> Response:
    body = await read_json_object(request)
    return await require_engine(request).serve(route, body, request)


@router.post("/score")
@router.post("/v1/score")
async def score(request: Request) -> Response:
    return await _serve(request, "/score")


@router.post("/rerank")
@router.post("/v1/rerank")
@router.post("/v2/rerank")
async def rerank(request: Request) -> Response:
    return await _serve(request, "/rerank")


@router.post("/pooling")
async def pooling(request: Request) -> Response:
    return await _serve(request, "/pooling")


@router.post("/classify")
async def classify(request: Request) -> Response:
    return await _serve(request, "/classify")


@router.post("/v1/load_lora_adapter")
async def load_lora_adapter(request: Request) -> Response:
    body = await read_json_object(request)
    return await require_engine(request).load_lora_adapter(body)


@router.post("/v1/unload_lora_adapter")
async def unload_lora_adapter(request: Request) -> Response:
    body = await read_json_object(request)
    return await require_engine(request).unload_lora_adapter(body)
