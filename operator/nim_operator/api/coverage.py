"""Which accepted fields this operator version does not act on. Pure.

Admission takes NVIDIA's whole NIMService schema, so no manifest of theirs fails on a field name. What the
operator does not build must still not pass in silence:

- ``not_built``: fields that change what runs or how it is reached (a multi-node group, DRA claims, a
  KServe InferenceService, routes, extra containers ...). Serving without them would be a different
  service than the one asked for, so the NIMService fails with reason ``UnsupportedField``, naming the
  field, what it asks for and how to do without it. Nothing is applied.
- ``ignored``: fields whose absence of effect leaves the service as asked (``replicas`` under an
  autoscaler, annotations of children). They are listed in a ``FieldsIgnored`` condition, present only
  while there is something to say.

When a field gets built, its entry leaves ``_NOT_BUILT`` or ``ignored``; nothing else has to change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nim_operator.api.spec import NIMServiceSpec

UNSUPPORTED_REASON = "UnsupportedField"
IGNORED_CONDITION = "FieldsIgnored"


@dataclass(frozen=True)
class Unbuilt:
    """A set field that asks for something this operator version does not build."""

    field: str
    asks_for: str
    without_it: str

    @property
    def message(self) -> str:
        return f"{self.field} asks for {self.asks_for}, which this operator does not build yet; {self.without_it}"


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


_Check = Callable[[NIMServiceSpec], bool]

# (field, is it set, what it asks for, how to do without it)
_NOT_BUILT: tuple[tuple[str, _Check, str, str], ...] = (
    (
        "spec.inferencePlatform: kserve",
        lambda s: s.inference_platform == "kserve",
        "a KServe InferenceService",
        "set inferencePlatform to standalone (or remove it) for a Deployment and Service",
    ),
    (
        "{router}.ingress",
        lambda s: (r := s.effective_router) is not None and r.ingress is not None,
        "an Ingress for <name>.<namespace>.<hostDomainName>",
        "use spec.expose.ingress with an IngressSpec instead",
    ),
    (
        "{router}.gateway",
        lambda s: (r := s.effective_router) is not None and r.gateway is not None,
        "Gateway API routes (HTTPRoute, GRPCRoute) to the Service",
        "remove it and route to the Service yourself",
    ),
    (
        "{router}.eppConfig",
        lambda s: (r := s.effective_router) is not None and r.epp_config is not None,
        "an InferencePool and its endpoint picker (Gateway API Inference Extension)",
        "remove it to balance over the Service",
    ),
    (
        "spec.proxy",
        lambda s: s.proxy is not None,
        "proxy settings and a CA bundle in the containers",
        "set HTTP_PROXY, HTTPS_PROXY and NO_PROXY in spec.env instead",
    ),
    (
        "spec.initContainers",
        lambda s: bool(s.init_containers),
        "init containers in the pod",
        "remove them",
    ),
    (
        "spec.sidecarContainers",
        lambda s: bool(s.sidecar_containers),
        "sidecar containers in the pod",
        "remove them",
    ),
    (
        "spec.expose.service.grpcPort",
        lambda s: s.expose.service.grpc_port is not None,
        "a gRPC port on the container and the Service",
        "remove it: our runtime serves HTTP on spec.expose.service.port",
    ),
    (
        "spec.podAffinity",
        lambda s: s.pod_affinity is not None,
        "pod affinity rules",
        "move them to spec.affinity.podAffinity",
    ),
)


def not_built(spec: NIMServiceSpec) -> list[Unbuilt]:
    """The set fields that ask for something not built, in the order of ``_NOT_BUILT``."""
    router = _router_path(spec)
    return [
        Unbuilt(field.format(router=router), asks_for, without_it)
        for field, is_set, asks_for, without_it in _NOT_BUILT
        if is_set(spec)
    ]


def unsupported_message(spec: NIMServiceSpec) -> str | None:
    """One message naming every field not built, or None when everything set is built."""
    found = not_built(spec)
    return "; ".join(u.message for u in found) if found else None


def ignored(spec: NIMServiceSpec) -> list[Ignored]:
    """The set fields without effect: accepted as NVIDIA accepts them, and said so in status."""
    out: list[Ignored] = []
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
    if spec.expose.service.metrics_port is not None:
        out.append(
            Ignored(
                "spec.expose.service.metricsPort",
                "NotApplied",
                "no separate metrics port is opened; metrics are served on the api port",
            )
        )
    return out
