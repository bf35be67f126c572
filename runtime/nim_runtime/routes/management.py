"""NIM's management endpoints: health, metrics, version, metadata, manifest and license.

None of them wait on the engine, so they stay fast while it is saturated: a probe that times out under
load would kill a healthy pod. The health probes do read the engine client's liveness flag (set by
vLLM's monitor thread the moment the engine core process exits), so a pod whose engine died is neither
ready nor live. Probes are normally answered before they reach these routes, by the probe door's thread
(:mod:`nim_runtime.probe_door`); the routes give the same answers.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from nim_runtime.context import runtime
from nim_runtime.health import LIVE_PATH, READY_PATH, health_answer
from nim_runtime.lifecycle import Phase
from nim_runtime.version import API_VERSION, runtime_version, vllm_version

router = APIRouter()


@router.get(LIVE_PATH)
async def live(request: Request) -> JSONResponse:
    """Reached only when the probe door is not in front (TLS) or has handed this connection to the event
    loop; the door gives the same answer (see :mod:`nim_runtime.health`)."""
    status, body = health_answer(LIVE_PATH, runtime(request).lifecycle)
    return JSONResponse(body, status_code=status)


@router.get(READY_PATH)
async def ready(request: Request) -> JSONResponse:
    status, body = health_answer(READY_PATH, runtime(request).lifecycle)
    return JSONResponse(body, status_code=status)


@router.get("/v1/metrics")
async def metrics(request: Request) -> Response:
    ctx = runtime(request)
    ctx.metrics.ready.set(1 if ctx.lifecycle.engine_alive() and ctx.lifecycle.phase is Phase.READY else 0)
    payload, content_type = ctx.metrics.render()
    return Response(payload, media_type=content_type)


@router.get("/v1/version")
async def version() -> dict[str, str]:
    return {"release": runtime_version(), "api": API_VERSION, "vllm": vllm_version()}


@router.get("/v1/metadata")
async def metadata(request: Request) -> dict[str, Any]:
    """The active profile and the model, shaped after NIM's metadata (plus ``profile`` and ``phase``)."""
    ctx = runtime(request)
    plan = ctx.plan
    manifest = plan.manifest
    return {
        "version": runtime_version(),
        "phase": ctx.lifecycle.phase.value,
        "modelInfo": [
            {
                "shortName": plan.served_name,
                "name": manifest.name,
                "modelUrl": plan.source,
                "task": manifest.task,
                "multimodal": manifest.multimodal,
                "maxModelLen": ctx.engine.max_model_len if ctx.engine else manifest.max_model_len,
            }
        ],
        "profile": {"id": plan.profile.id, "tags": plan.profile.tags},
        "selectedProfile": plan.profile.id,
        "licenseInfo": {"name": manifest.license, "url": manifest.license_url},
    }


@router.get("/v1/manifest")
async def manifest(request: Request) -> dict[str, Any]:
    return runtime(request).plan.manifest.model_dump(mode="json")


@router.get("/v1/license")
async def license_info(request: Request) -> dict[str, Any]:
    manifest = runtime(request).plan.manifest
    return {
        "object": "license",
        "name": manifest.license,
        "url": manifest.license_url,
        "model": manifest.name,
        "runtime": {"name": "nim-runtime", "license": "Apache-2.0"},
    }
