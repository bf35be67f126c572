"""Computing a NIMService's status from the decision, its Deployment and its pods' problem. Pure.

Readiness is counted from the Deployment; when replicas are missing, a pod-level problem (see
``pod_health``) says why in the Ready condition. Conditions keep their ``lastTransitionTime`` unless
their status flips, so recomputing the same world yields the same status, and the shell can skip the
write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nim_operator.api.coverage import IGNORED_CONDITION, ignored
from nim_operator.api.spec import Condition, ModelStatus, NIMServiceSpec, NIMServiceStatus, ProfileStatus
from nim_operator.pod_health import PodProblem
from nim_operator.render.children import service_name
from nim_operator.render.meta import Owner, selector_labels

#: (ready, reason, message, available replicas, current replicas)
Readiness = tuple[bool, str, str, int, int]


@dataclass(frozen=True)
class StatusExtras:
    """What an integration adds to status: readiness from its own object (a KServe InferenceService
    instead of the Deployment), the endpoints it publishes, and conditions of its own (type, ok, reason,
    message) such as the router's ``Routed``, which never change the state."""

    readiness: Readiness | None = None
    cluster_endpoint: str | None = None
    external_endpoint: str | None = None
    conditions: tuple[tuple[str, bool, str, str], ...] = ()


@dataclass(frozen=True)
class Failure:
    """Why the NIMService cannot be reconciled until its spec or the cluster changes."""

    reason: str
    message: str


@dataclass(frozen=True)
class Note:
    """A condition that informs without failing (shared storage, objects a rename left behind); present
    only while it has something to say."""

    type: str
    ok: bool
    reason: str
    message: str


def _condition(
    previous: list[Condition], type_: str, ok: bool, reason: str, message: str, generation: int, now: str
) -> Condition:
    status = "True" if ok else "False"
    before = next((c for c in previous if c.type == type_), None)
    since = before.last_transition_time if before is not None and before.status == status else now
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=since,
    )


def _ignored_fields(
    previous: list[Condition], spec: NIMServiceSpec | None, generation: int, now: str
) -> list[Condition]:
    """A FieldsIgnored condition (status True) while some accepted field has no effect; none otherwise."""
    found = ignored(spec) if spec is not None else []
    if not found:
        return []
    message = "; ".join(i.message for i in found)
    return [_condition(previous, IGNORED_CONDITION, True, found[0].reason, message, generation, now)]


DEGRADED_CONDITION = "Degraded"


def _degraded(previous: list[Condition], missing: list[str], generation: int, now: str) -> list[Condition]:
    """A Degraded condition (status True) while optional integrations are missing; none otherwise.

    The service itself serves; what is missing (a ServiceMonitor whose CRD is not installed ...) is named
    with the fix, and installing it heals without a spec edit (the resync retries).
    """
    if not missing:
        return []
    return [_condition(previous, DEGRADED_CONDITION, True, "IntegrationMissing", "; ".join(missing), generation, now)]


def _notes(previous: list[Condition], notes: Sequence[Note], generation: int, now: str) -> list[Condition]:
    return [_condition(previous, n.type, n.ok, n.reason, n.message, generation, now) for n in notes]


def _readiness(spec: NIMServiceSpec, deployment: dict[str, Any] | None) -> Readiness:
    """(ready, reason, message, available, current replicas) from the Deployment's status."""
    if deployment is None:
        return False, "DeploymentMissing", "the Deployment does not exist yet", 0, 0
    status = deployment.get("status") or {}
    available = int(status.get("availableReplicas") or 0)
    replicas = int(status.get("replicas") or 0)
    wanted = deployment.get("spec", {}).get("replicas")
    wanted = spec.desired_replicas if wanted is None else int(wanted)
    current = status.get("observedGeneration", 0) >= deployment.get("metadata", {}).get("generation", 0)
    if wanted == 0:
        return False, "ScaledToZero", "replicas is 0", available, replicas
    updated = int(status.get("updatedReplicas") or 0)
    if current and available >= wanted and updated >= wanted:
        return True, "AllReplicasReady", f"{available}/{wanted} replicas available", available, replicas
    return False, "ReplicasNotReady", f"{available}/{wanted} replicas available", available, replicas


def compute_status(
    *,
    owner: Owner,
    spec: NIMServiceSpec | None,
    generation: int,
    previous: NIMServiceStatus | None,
    profile: ProfileStatus | None,
    served_model_name: str | None,
    failure: Failure | None,
    deployment: dict[str, Any] | None,
    now: str,
    pod_problem: PodProblem | None = None,
    missing: list[str] | None = None,
    extras: StatusExtras | None = None,
    notes: Sequence[Note] = (),
) -> NIMServiceStatus:
    """The whole status for this world; ``pod_problem`` only colours a Ready condition that is False;
    ``notes`` become conditions of their own.

    A pod problem never makes the state Failed: the spec was valid and was applied, and fixing the spec
    (a new image) or the cluster (a Secret, a node) recovers the service without the operator's help.
    """
    before = previous.conditions if previous else []
    if failure is not None:
        conditions = [
            _condition(before, "Ready", False, failure.reason, failure.message, generation, now),
            _condition(before, "Failed", True, failure.reason, failure.message, generation, now),
            _condition(
                before,
                "ProfileSelected",
                profile is not None and profile.id is not None,
                failure.reason,
                failure.message,
                generation,
                now,
            ),
            *_ignored_fields(before, spec, generation, now),
            *_notes(before, notes, generation, now),
        ]
        return NIMServiceStatus(
            state="Failed",
            conditions=conditions,
            observed_generation=generation,
            selector=",".join(f"{k}={v}" for k, v in selector_labels(owner).items()),
            profile=profile,
            available_replicas=previous.available_replicas if previous else 0,
            replicas=previous.replicas if previous else 0,
        )
    if spec is None:
        raise ValueError("a status without failure needs the spec")
    extras = extras or StatusExtras()
    ready, reason, message, available, replicas = extras.readiness or _readiness(spec, deployment)
    if not ready and pod_problem is not None and reason != "ScaledToZero":
        reason, message = pod_problem.reason, f"{pod_problem.message} ({message})"
    if profile is not None and profile.id:
        selected = _condition(before, "ProfileSelected", True, "ProfileSelected", profile.reason, generation, now)
    else:
        reason_text = profile.reason if profile else "the runtime selects its profile"
        selected = _condition(before, "ProfileSelected", True, "RuntimeSelects", reason_text, generation, now)
    conditions = [
        _condition(before, "Ready", ready, reason, message, generation, now),
        _condition(before, "Failed", False, "Reconciled", "", generation, now),
        selected,
        *(_condition(before, type_, ok, why, text, generation, now) for type_, ok, why, text in extras.conditions),
        *_ignored_fields(before, spec, generation, now),
        *_degraded(before, missing or [], generation, now),
        *_notes(before, notes, generation, now),
    ]
    if reason == "ScaledToZero":
        state = "ScaledToZero"
    else:
        state = "Ready" if ready else ("Pending" if available == 0 else "NotReady")
    port = spec.expose.service.port
    default_endpoint = f"{service_name(owner, spec)}.{owner.namespace}.svc.cluster.local:{port}"
    kserve = spec.inference_platform == "kserve"
    return NIMServiceStatus(
        state=state,
        conditions=conditions,
        observed_generation=generation,
        available_replicas=available,
        replicas=replicas,
        selector=",".join(f"{k}={v}" for k, v in selector_labels(owner).items()),
        model=ModelStatus(
            name=served_model_name,
            # KServe names its own Service; its address is known once it publishes one.
            cluster_endpoint=extras.cluster_endpoint or (None if kserve else default_endpoint),
            external_endpoint=extras.external_endpoint,
        ),
        profile=profile,
    )
