"""The optional APIs some children need, and what to tell the user when the cluster does not serve one.

Such a child's kind comes from a CRD that a cluster may lack. Routes and the InferencePool are extras:
without the Gateway API (or its inference extension) the NIMService still serves through its Service, so
they are left out and a Degraded condition names what to install (``requires``). An InferenceService is
the whole workload under ``inferencePlatform: kserve``: without KServe nothing can serve, so the
NIMService is Failed with reason ``MissingAPI`` naming KServe (``unserved``) and nothing is applied. Either
way the CRD's arrival (or the next resync) reconciles it again, so installing the CRDs heals it without a
spec edit.
"""

from __future__ import annotations

from nim_operator.api.spec import NIMServiceSpec
from nim_operator.render.epp import INFERENCE_API
from nim_operator.render.kserve import KSERVE_API
from nim_operator.render.router import GATEWAY_API, router_path

_ROUTES = ("HTTPRoute", "GRPCRoute")


def requires(spec: NIMServiceSpec, api_version: str, kind: str) -> str | None:
    """What an optional child needs installed, and how to do without it (None: not optional)."""
    router = router_path(spec)
    if api_version == GATEWAY_API and kind in _ROUTES:
        return (
            f"{router}.gateway asks for a {kind}: install the Gateway API CRDs (gateway.networking.k8s.io, "
            f"standard channel) and a Gateway controller, and it is created within a minute; or remove "
            f"{router}.gateway. The NIMService serves through its Service meanwhile"
        )
    if api_version == INFERENCE_API and kind == "InferencePool":
        return (
            f"{router}.eppConfig asks for an InferencePool: install the Gateway API Inference Extension's CRDs "
            f"(inference.networking.k8s.io), and it is created within a minute; or remove {router}.eppConfig"
        )
    return None


def unserved(spec: NIMServiceSpec, api_version: str, kind: str) -> str | None:
    """What to do when a required child's API is absent, for the Failed condition (None: the default)."""
    if (api_version, kind) == (KSERVE_API, "InferenceService") and spec.inference_platform == "kserve":
        return (
            "spec.inferencePlatform: kserve asks for a KServe InferenceService: install KServe (its CRDs, "
            "serving.kserve.io, and its controller) and the NIMService recovers by itself; or set "
            "spec.inferencePlatform to standalone for a Deployment and Service"
        )
    return None
