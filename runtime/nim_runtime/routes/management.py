"""NIM's management endpoints: health, metrics, version, metadata, manifest and license.

None of them wait on the engine, so they stay fast while it is saturated: a probe that times out under
load would kill a healthy pod. The health probes do read the engine client's liveness flag (set by
vLLM's monitor thread the moment the engine core process exits), so a pod whose engine died is neither
ready nor live.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from nim_runtime.context import runtime
from nim_runtime.lifecycle import READY_MESSAGES, Phase
from nim_runtime.version import API_VERSION, runtime_version, vllm_version

router = APIRouter()


@router.get("/v1/health/live")
async def live(request: Request) -> JSONResponse:
    """200 while the HTTP server answers (also while the model loads and while draining), 503 once the
    engine has died: the process is about to exit non-zero, and the kubelet should restart it anyway."""
    lifecycle = runtime(request).lifecycle
    if not lifecycle.engine_alive():
        body = {"object": "health.response", "message": READY_MESSAGES[Phase.ENGINE_DEAD]}
        return JSONResponse(body, status_code=503)
    return JSONResponse({"object": "health.response", "message": "Service is live."})


@router.get("/v1/health/ready")
async def ready(request: Request) -> JSONResponse:
    lifecycle = runtime(request).lifecycle
    status = 200 if lifecycle.engine_alive() and lifecycle.phase is Phase.READY else 503
    body = {"object": "health.response", "message": READY_MESSAGES[lifecycle.phase]}
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
