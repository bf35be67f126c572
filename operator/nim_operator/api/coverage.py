"""Which accepted fields this operator version does not act on. Pure.

Admission takes NVIDIA's whole NIMService schema, so no manifest of theirs fails on a field name, and every
field that changes what runs or how it is reached is built. What remains are fields whose absence of
effect leaves the service as asked (``replicas`` under an autoscaler, annotations of children, the parts
of an MPI launch): they must still not pass in silence, so :func:`ignored` lists them for the
``FieldsIgnored`` condition, present only while there is something to say. When one gets built, its entry
leaves :func:`ignored`; nothing else has to change.
"""

from __future__ import annotations

from dataclasses import dataclass

from nim_operator.api.kserve import deployment_mode
from nim_operator.api.spec import NIMServiceSpec

IGNORED_CONDITION = "FieldsIgnored"


@dataclass(frozen=True)
class Ignored:
    """A set field that has no effect, and why that leaves the service as asked."""

    field: str
    reason: str
    why: str

    @property
    def message(self) -> str:
        return f"{self.field} is ignored: {self.why}"


def _router_path(spec: NIMServiceSpec) -> str:
    return "spec.expose.router" if spec.expose.router is not None else "spec.router"


def ignored(spec: NIMServiceSpec) -> list[Ignored]:
    """The set fields without effect: accepted as NVIDIA accepts them, and said so in status."""
    out: list[Ignored] = []
    affinity = spec.affinity or {}
    if spec.pod_affinity is not None and "podAffinity" in affinity:
        out.append(
            Ignored(
                "spec.podAffinity",
                "Superseded",
                "spec.affinity.podAffinity is set and takes its place (spec.podAffinity is deprecated by NVIDIA)",
            )
        )
    if spec.replicas is not None and spec.autoscaling:
        out.append(
            Ignored(
                "spec.replicas",
                "ReplicasUnderAutoscaling",
                "spec.scale.enabled is true, so the HorizontalPodAutoscaler sets the replica count",
            )
        )
    if spec.scale is not None and spec.scale.annotations:
        out.append(Ignored("spec.scale.annotations", "NotApplied", "not put on the HorizontalPodAutoscaler yet"))
    pvc = spec.storage.pvc if spec.storage else None
    if pvc is not None and pvc.annotations:
        why = "not put on the created PVC yet" if pvc.create else "the PVC is not created by the operator"
        out.append(Ignored("spec.storage.pvc.annotations", "NotApplied", why))
    multi = spec.multi_node
    if multi is not None and multi.ray is None:
        out.append(
            Ignored(
                "spec.multiNode.mpi",
                "NotApplied",
                "the group gets NVIDIA's multi-node env (NIM_MULTI_NODE, NIM_NODE_RANK, CLUSTER_SIZE ...), but no "
                "SSH key Secret, MPI hostfile or start script is created for an MPI launch: set spec.multiNode.ray "
                "for a runtime that starts its group with Ray",
            )
        )
    if multi is not None and multi.compute_domain is not None:
        out.append(
            Ignored(
                "spec.multiNode.computeDomain",
                "NotApplied",
                "no NVLink ComputeDomain (NVIDIA's DRA driver) is created or claimed for the group yet",
            )
        )
    if spec.inference_platform == "kserve":
        out += kserve_ignored(spec)
    return out


_KSERVE_METRICS = ("cpu", "memory")


def _kserve_scale_metric(metric: dict[str, object]) -> bool:
    resource = metric.get("resource")
    return metric.get("type") == "Resource" and isinstance(resource, dict) and resource.get("name") in _KSERVE_METRICS


def kserve_ignored(spec: NIMServiceSpec) -> list[Ignored]:
    """What an InferenceService cannot carry: KServe makes the Service, the routes and the autoscaler itself."""
    out: list[Ignored] = []
    why = "with inferencePlatform kserve, KServe"
    router = spec.effective_router
    path = _router_path(spec)
    if router is not None and router.gateway is not None:
        out.append(Ignored(f"{path}.gateway", "NotApplied", f"{why} routes the InferenceService itself"))
    if router is not None and router.epp_config is not None:
        out.append(Ignored(f"{path}.eppConfig", "NotApplied", f"{why} balances over its own Service"))
    service = spec.expose.service
    if service.type != "ClusterIP" or service.name or service.annotations or service.labels:
        out.append(
            Ignored(
                "spec.expose.service (type, name, annotations, labels)",
                "NotApplied",
                f"{why} creates the InferenceService's Service; only its ports reach the predictor's container",
            )
        )
    mode = deployment_mode(spec.annotations)
    if mode == "Knative" and spec.replicas is not None:
        out.append(
            Ignored(
                "spec.replicas",
                "ReplicasUnderKnative",
                "KServe runs in Knative mode, whose autoscaler sets the replica count "
                "(autoscaling.knative.dev/min-scale and max-scale annotations bound it)",
            )
        )
    hpa = spec.scale.hpa if spec.autoscaling and spec.scale is not None else None
    if hpa is not None and hpa.behavior:
        out.append(Ignored("spec.scale.hpa.behavior", "NotApplied", f"{why} creates the autoscaler without it"))
    if hpa is not None and any(not _kserve_scale_metric(m) for m in hpa.metrics):
        out.append(
            Ignored(
                "spec.scale.hpa.metrics",
                "NotApplied",
                f"{why} scales on one cpu or memory Resource metric (the first one given); the others are dropped",
            )
        )
    return out
