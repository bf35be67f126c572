"""One level-based reconcile of one NIMService: read facts, decide, render, apply, report.

Called for every change of the NIMService, of its Deployment, of its pods' health and of the cluster's
GPU nodes; it never branches on which event happened. Unchanged children and unchanged status cost no
write.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes import client
from pydantic import ValidationError

from nim_operator import constants as c
from nim_operator import metrics
from nim_operator.api.spec import Condition, NIMServiceSpec, NIMServiceStatus, ProfileStatus, Rejected
from nim_operator.applied import key_of
from nim_operator.cache_mount import CacheMount, cache_mount, profile_not_held
from nim_operator.cluster_capacity import ClusterCapacity
from nim_operator.discovery import ManifestDiscovery
from nim_operator.dra_inventory import DraInventory
from nim_operator.integration_status import status_extras
from nim_operator.integrations import IngressClasses, ingress_problems
from nim_operator.kube import ChildRejected, KindNotServed, Kube
from nim_operator.left_behind import LeftBehindFinder
from nim_operator.manifest_source import DISCOVERING, ManifestChoice, resolve_manifest
from nim_operator.placement import (
    Placement,
    decide,
    kept_pools,
    placement_inputs,
    placement_of,
    pod_tolerations,
    profile_status,
)
from nim_operator.pod_health import (
    PodProblem,
    find_pod_problem,
    pod_health,
    replica_failure,
    service_of,
    unbound_claim,
)
from nim_operator.render import Child, Owner, render_children
from nim_operator.render import lws as lws_render
from nim_operator.render.deployment import pvc_name
from nim_operator.render.router import ROUTED_CONDITION, route_refusal
from nim_operator.slim import owns_replicas, slim, slim_deployment, slim_pod
from nim_operator.status import Failure, Note, compute_status
from nim_operator.storage_notes import storage_notes
from nim_operator.workload import (
    Workload,
    WorkloadError,
    allocation_note,
    explain,
    plan_workload,
    prune_templates,
    selection_nodes,
    selection_view,
    verify_claims,
)
from nim_runtime.profiles import NodeGpuFacts, ProfileDecision, ProfileError, ProfileSet

log = logging.getLogger(__name__)

#: Children that may be deleted and created again when an edit by someone else blocks our apply: nothing
#: of theirs is lost (a Deployment's pods, a claim's data would be).
RECREATABLE_KINDS = frozenset({"Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Ingress", "NetworkPolicy"})
#: The kinds that run the pods: applied before every other child.
WORKLOAD_KINDS = frozenset({"Deployment", "InferenceService"})
EventSink = Callable[[Mapping[str, Any], str, str, str], None]


@dataclass
class Outcome:
    """What one reconcile did: for events, metrics and tests."""

    status: NIMServiceStatus
    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    status_written: bool = False


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _validation_message(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        path = "spec." + ".".join(str(p) for p in e["loc"])
        parts.append(f"{path}: {e['msg']}")
    return "; ".join(parts)


def _missing_api(child: Child, err: KindNotServed) -> str:
    """The Degraded text for an optional child whose API is absent; a required one refuses the spec."""
    if child.requires is None:
        text = child.unserved or (
            f"the {child.kind} this spec asks for cannot be created; install its CRDs (retried without a spec "
            "edit) or remove the field that asks for it"
        )
        raise _Refusal(Failure("MissingAPI", f"{err}: {text}"))
    return f"{err}: {child.requires}"


def _api_problem(err: BaseException) -> tuple[str, str]:
    """(reason, message) for a reconcile that raised: what a person reading status can act on."""
    retrying = "retried with backoff"
    if isinstance(err, client.ApiException):
        if err.status == 403:
            return (
                "Forbidden",
                f"the API server refused the operator: {_api_message(err)}; grant it in the operator's RBAC "
                f"(the chart's rbac.yaml); {retrying}",
            )
        if err.status == 409:
            return "Conflict", f"a write conflicted with another writer: {_api_message(err)}; {retrying}"
        if err.status == 429:
            return "Throttled", f"the API server asked the operator to slow down; {retrying}"
        return "ApiError", f"the API server answered {err.status} {err.reason}: {_api_message(err)}; {retrying}"
    if isinstance(err, (urllib3.exceptions.HTTPError, OSError)):
        return (
            "ApiUnreachable",
            f"the API server did not answer in time or could not be reached ({type(err).__name__}); {retrying}",
        )
    return "InternalError", f"the operator failed ({type(err).__name__}: {err}); {retrying}; please report it"


def _api_message(err: client.ApiException) -> str:
    try:
        return str(json.loads(err.body or "{}").get("message") or err.reason)
    except (TypeError, ValueError, AttributeError):
        return str(err.reason)


def _same_placement(before: ProfileStatus, now: ProfileStatus) -> bool:
    """Whether a decision kept is placed as before: same profile, GPU products and pools."""
    return before.id == now.id and before.gpu_products == now.gpu_products and before.node_pools == now.node_pools


#: How a service whose image chooses its own profile is deployed (the end of its profile reason).
AS_SPECIFIED = "; deployed with the resources and scheduling given in the spec"


def _keep_while_probing(choice: ManifestChoice, previous: NIMServiceStatus | None, generation: int) -> ManifestChoice:
    """A service already deployed without a manifest (its image could not be asked) stays as it is while the
    image is asked again, after the retry interval or an operator restart: a probe under way is not news,
    its answer is (the service is queued again when it comes)."""
    if previous is None or previous.observed_generation != generation or previous.profile is None:
        return choice
    selected = next((c for c in previous.conditions if c.type == "ProfileSelected"), None)
    ready = next((c for c in previous.conditions if c.type == "Ready"), None)
    if previous.profile.id or selected is None or selected.reason != "RuntimeSelects":
        return choice
    if ready is None or ready.reason == DISCOVERING:  # deployed nothing yet: the first answer is awaited
        return choice
    return ManifestChoice(None, previous.profile.reason.removesuffix(AS_SPECIFIED))


def _previous_status(body: Mapping[str, Any]) -> NIMServiceStatus | None:
    raw = {k: v for k, v in (body.get("status") or {}).items() if k != "kopf"}
    if not raw:
        return None
    try:
        return NIMServiceStatus.model_validate(raw)
    except ValidationError:
        return None  # written by an older operator: start afresh


def _service_key(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, NIMService name) of a pod the operator's Deployments made, or None."""
    service = service_of(pod)
    return None if service is None else (pod["metadata"]["namespace"], service)


def _rollout_view(deployment: Mapping[str, Any]) -> tuple[Any, ...]:
    """What status and the rollout strategy read of a Deployment."""
    status = deployment.get("status") or {}
    return (
        (deployment.get("metadata") or {}).get("generation"),
        (deployment.get("spec") or {}).get("replicas"),
        *(status.get(f) for f in ("observedGeneration", "replicas", "availableReplicas", "updatedReplicas")),
    )


def _replicas_owners(deployment: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The managedFields entries that own ``spec.replicas``."""
    return [entry for entry in deployment.get("metadata", {}).get("managedFields") or [] if owns_replicas(entry)]


def _applies_replicas(deployment: Mapping[str, Any]) -> bool:
    """Whether our field manager's apply owns ``spec.replicas`` of this Deployment (and no one else does)."""
    owners = _replicas_owners(deployment)
    ours = any(e.get("manager") == c.FIELD_MANAGER and e.get("operation") == "Apply" for e in owners)
    return ours and len(owners) == 1


class _Refusal(Exception):
    """This generation of the spec cannot be reconciled: report the failure, touch nothing more."""

    def __init__(self, failure: Failure, profile: ProfileStatus | None = None) -> None:
        super().__init__(failure.message)
        self.failure = failure
        self.profile = profile


def _parse_spec(body: Mapping[str, Any]) -> NIMServiceSpec:
    try:
        return NIMServiceSpec.model_validate(body.get("spec") or {})
    except ValidationError as err:
        raise _Refusal(Failure("InvalidSpec", _validation_message(err))) from err


def _available(workload: Mapping[str, Any] | None) -> bool:
    """Whether every replica the workload (Deployment, or a group in its terms) wants is available."""
    if workload is None:
        return False
    wanted = (workload.get("spec") or {}).get("replicas")
    available = int((workload.get("status") or {}).get("availableReplicas") or 0)
    return available >= int(1 if wanted is None else wanted)


def _refused(previous: NIMServiceStatus | None, generation: int) -> bool:
    """Whether this generation of the spec was already found invalid."""
    if previous is None or previous.state != "Failed" or previous.observed_generation != generation:
        return False
    return any(c.type == "Failed" and c.status == "True" and c.reason == "InvalidSpec" for c in previous.conditions)


class Reconciler:
    """Holds the shared, watched facts (GPU nodes) and serialises work per NIMService."""

    def __init__(
        self,
        kube: Kube,
        emit: EventSink | None = None,
        *,
        discovery: ManifestDiscovery | None = None,
        runtime_repository: str | None = None,
    ) -> None:
        self.kube = kube
        self.emit = emit or (lambda body, kind, reason, message: None)
        # Images' own manifests, probed once per image (shared with the NIMCache reconciler), and the
        # repository of the operator's runtime image, which takes our catalog's ids without a probe.
        self.discovery = discovery or ManifestDiscovery(kube)
        self.runtime_repository = runtime_repository
        # GPU facts of the schedulable nodes (what new decisions count on) and of the cordoned ones (which
        # keep a decision made for their product: maintenance is not removal).
        self.nodes: dict[str, NodeGpuFacts] = {}
        self.cordoned: dict[str, NodeGpuFacts] = {}
        # The cluster's IngressClasses from their watch; None while unknown (not listable): then unchecked.
        self.ingress_classes: IngressClasses | None = None
        # GPUs held by pods, autoscaler pools and the GPU catalogue: what placement reads besides nodes.
        self.capacity = ClusterCapacity(kube, namespace=os.environ.get(c.ENV_OPERATOR_NAMESPACE) or None)
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        # The status last written per NIMService uid. Events of children can hand us a body older than our
        # own last write; comparing against it would repeat writes and miss a refusal just reported.
        self._written: dict[str, NIMServiceStatus] = {}
        self._guard = threading.Lock()
        # The newest Deployment each watch event delivered, by (namespace, name): status needs no GET.
        self._deployments: dict[tuple[str, str], dict[str, Any]] = {}
        # The pods of each NIMService as their watch delivered them, by (namespace, NIMService name) and pod
        # name: status explains missing replicas from them without listing pods on every reconcile.
        self._pods: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        # The pod problem last announced by an Event, per NIMService uid: one Event when a problem appears
        # or changes its reason, not one per reconcile (pod events re-run reconcile often).
        self._announced: dict[str, PodProblem] = {}
        # NIMService uids that have been Ready since this process started (or were when it started): their
        # changes of state are news, while a first rollout's (Pending, NotReady, Ready) is told by status.
        self._served: set[str] = set()
        # NIMCache bodies by (namespace, name), kept by their watch; and which cache each service mounts.
        self.caches: dict[tuple[str, str], dict[str, Any]] = {}
        self._mounts: dict[tuple[str, str], str] = {}
        # GPUs offered through DRA (ResourceSlices) and which nodes also have the device plugin.
        self.dra = DraInventory()
        # The newest LeaderWorkerSet of each multi-node NIMService, by (namespace, NIMService name).
        self._groups: dict[tuple[str, str], dict[str, Any]] = {}
        # Claims and Services a rename left behind, listed by label at a bounded rate (storage_notes).
        self.left_behind = LeftBehindFinder(kube)

    def _lock(self, key: tuple[str, str]) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def forget(self, uid: str, *, namespace: str | None = None, name: str | None = None) -> None:
        """Drop everything remembered of a deleted NIMService: a long-running operator must not grow with
        the services that came and went."""
        self._written.pop(uid, None)
        self._announced.pop(uid, None)
        self._served.discard(uid)
        self.kube.applied.prune_owner(uid)
        self.left_behind.forget(uid)
        if namespace is not None and name is not None:
            with self._guard:
                self._pods.pop((namespace, name), None)
                self._deployments.pop((namespace, name), None)
                self._groups.pop((namespace, name), None)
                self._mounts.pop((namespace, name), None)
                self._locks.pop((namespace, name), None)

    def set_node(self, name: str, facts: NodeGpuFacts | None, *, schedulable: bool) -> tuple[NodeGpuFacts | None, bool]:
        """Record a node's GPU facts (None: deleted); returns what was known before, as (facts, schedulable)."""
        with self._guard:
            before = (self.nodes.get(name), True) if name in self.nodes else (self.cordoned.get(name), False)
            self.nodes.pop(name, None)
            self.cordoned.pop(name, None)
            if facts is not None:
                (self.nodes if schedulable else self.cordoned)[name] = facts
        return before

    def last_status(self, body: Mapping[str, Any]) -> NIMServiceStatus | None:
        """The newest status known for this NIMService: ours as written, else the body's."""
        return self._written.get(str(body["metadata"].get("uid"))) or _previous_status(body)

    def deployment_seen(self, deployment: dict[str, Any]) -> bool:
        """A Deployment from the watch: status reads it instead of a GET, and the apply cache learns it.

        True when it is news for its NIMService: someone else changed its spec, or a count status reads
        moved. (The Deployment controller also rewrites conditions' timestamps: no reconcile for those.)
        """
        meta = deployment["metadata"]
        key = (meta["namespace"], meta["name"])
        before = self._deployments.get(key)
        self._deployments[key] = slim_deployment(deployment)
        drifted = self.kube.observe(deployment)
        return drifted or before is None or _rollout_view(before) != _rollout_view(deployment)

    def group_seen(self, service: tuple[str, str], group: dict[str, Any]) -> None:
        """A LeaderWorkerSet from the watch, keyed by its NIMService: status reads it instead of a GET."""
        with self._guard:
            self._groups[service] = slim(group)
        self.kube.observe(group)

    def group_gone(self, service: tuple[str, str], name: str) -> None:
        with self._guard:
            self._groups.pop(service, None)
        self.kube.forget(lws_render.API_VERSION, lws_render.KIND, service[0], name)

    def deployment_gone(self, namespace: str, name: str) -> None:
        self._deployments.pop((namespace, name), None)
        self.kube.forget("apps/v1", "Deployment", namespace, name)

    def pod_seen(self, pod: dict[str, Any]) -> tuple[str, str] | None:
        """Remember a pod from the watch; the (namespace, name) of its NIMService if it is news.

        None when the pod is not a NIMService's, or when nothing status reads of it changed (a probe
        result, a new resourceVersion): readiness itself reaches status through the Deployment's events,
        so such pod events need no reconcile at all.
        """
        key = _service_key(pod)
        if key is None:
            return None
        meta = pod["metadata"]
        with self._guard:
            pods = self._pods.setdefault(key, {})
            before = pods.get(meta["name"])
            pods[meta["name"]] = slim_pod(pod)
        if before is not None and pod_health(before) == pod_health(pod):
            return None
        return key

    def pod_gone(self, pod: dict[str, Any]) -> tuple[str, str] | None:
        """Forget a deleted pod; the (namespace, name) of its NIMService, whose status may change."""
        key = _service_key(pod)
        if key is None:
            return None
        meta = pod["metadata"]
        with self._guard:
            pods = self._pods.get(key, {})
            pods.pop(meta["name"], None)
            if not pods:
                self._pods.pop(key, None)
        return key

    def pods_of(self, namespace: str, name: str) -> list[dict[str, Any]]:
        with self._guard:
            return list(self._pods.get((namespace, name), {}).values())

    def reconcile(self, body: Mapping[str, Any]) -> Outcome:
        meta = body["metadata"]
        with self._lock((meta["namespace"], meta["name"])), metrics.RECONCILE_SECONDS.time():
            try:
                outcome = self._reconcile(body)
            except Exception:
                metrics.RECONCILES.labels("error").inc()
                raise
        failed = outcome.status.state == "Failed"
        result = "failed" if failed else ("applied" if outcome.applied or outcome.deleted else "noop")
        metrics.RECONCILES.labels(result).inc()
        metrics.STATES.set(meta["namespace"], meta["name"], outcome.status.state)
        if result != "noop":
            # Only reconciles that changed something: a resync of a thousand steady services logs nothing.
            log.info(
                "reconciled %s/%s: %s; applied %s; deleted %s",
                meta["namespace"],
                meta["name"],
                outcome.status.state,
                ", ".join(outcome.applied) or "nothing",
                ", ".join(outcome.deleted) or "nothing",
            )
        return outcome

    def _reconcile(self, body: Mapping[str, Any]) -> Outcome:
        meta = body["metadata"]
        owner = Owner(meta["name"], meta["namespace"], meta["uid"])
        generation = int(meta.get("generation") or 0)
        previous = self._written.get(owner.uid) or _previous_status(body)
        if previous is not None and (previous.observed_generation or 0) > generation:
            return Outcome(status=previous)  # a stale copy from a child's event: the newer spec was handled
        if previous is not None and _refused(previous, generation):
            # Retrying cannot help until the spec changes, and each try would create and roll back
            # children, whose deletion events would trigger the next try.
            return Outcome(status=previous)
        spec: NIMServiceSpec | None = None
        pstatus: ProfileStatus | None = None
        waiting: Failure | None = None
        notes: list[Note] = []
        try:
            spec = _parse_spec(body)
            self._remember_mount((owner.namespace, owner.name), spec)
            choice = resolve_manifest(
                self.kube, self.discovery, owner.namespace, owner.name, spec, runtime_repository=self.runtime_repository
            )
            if choice.refusal is not None:
                raise _Refusal(choice.refusal)
            if choice.waiting is not None:
                choice = _keep_while_probing(choice, previous, generation)
            manifest = choice.manifest
            nodes = selection_nodes(list(self.nodes.values()), self.dra.dra_only(), cordoned=set(self.cordoned))
            decision, pstatus = self._choose(
                spec, manifest, previous, generation, nodes, (owner.namespace, owner.name), about=choice.about
            )
            workload, placement, pstatus = self._plan(owner, spec, manifest, decision, nodes, pstatus)
            mount, waiting = self._cache_mount(owner.namespace, spec, placement)
            waiting = waiting or choice.waiting
            notes = storage_notes(self.left_behind, owner, spec, mount, generation)
            missing: list[str] = []
            if (refused := route_refusal(owner, spec)) is not None:
                raise _Refusal(Failure(*refused))
            if waiting is None:
                blocked = self._surge_blocked(owner)
                children = render_children(
                    owner, spec, placement, mount, surge_blocked=blocked, group=workload.group, claims=workload.claims
                )
                children = self._keep_replicas(owner, spec, children)
                outcome, applied, missing = self._apply_children(owner, children)
                missing += ingress_problems([ch.body for ch in children if ch.body], self.ingress_classes)
                spec_changed = previous is not None and previous.observed_generation != generation
                outcome.deleted += self._prune(owner, workload, outcome, spec_changed)
            else:
                # Nothing changes while the cache fills: running pods keep what they mount.
                outcome, applied = Outcome(status=NIMServiceStatus()), {}
        except _Refusal as refusal:
            return self._fail(body, owner, spec, generation, previous, refusal.profile or pstatus, refusal.failure)
        deployment = self._workload_state(owner, spec, applied)
        pods = self.pods_of(owner.namespace, owner.name)
        problem = find_pod_problem(pods) or replica_failure(deployment)
        if problem is None and waiting is None and not _available(deployment):
            problem = self._claim_problem(owner, spec, mount)
        if waiting is not None:
            problem = PodProblem(waiting.reason, waiting.message)
        outcome.status = compute_status(
            owner=owner,
            spec=spec,
            generation=generation,
            previous=previous,
            profile=pstatus,
            served_model_name=placement.served_model_name,
            failure=None,
            deployment=deployment,
            now=_now(),
            pod_problem=problem,
            missing=missing,
            notes=notes,
            extras=status_extras(self.kube, owner, spec, applied, pods),
        )
        outcome.status_written = self._write_status(body, owner, previous, outcome.status)
        ready = next(c for c in outcome.status.conditions if c.type == "Ready")
        # Announced only when status shows it too, so an Event never says what status does not.
        shown = ready.status == "False" and problem is not None and ready.reason == problem.reason
        shown = shown and ready.reason != DISCOVERING  # a running manifest probe is routine, no Warning
        self._announce(body, owner, problem if shown else None)
        return outcome

    def _plan(
        self,
        owner: Owner,
        spec: NIMServiceSpec,
        manifest: ProfileSet | None,
        decision: ProfileDecision | None,
        nodes: list[NodeGpuFacts],
        pstatus: ProfileStatus,
    ) -> tuple[Workload, Placement, ProfileStatus]:
        """The workload (Deployment or group, DRA claims), the placement to render and the explained profile.

        Claims are checked against the cluster here, before anything is applied: a claim nothing serves
        fails the NIMService instead of leaving pods Pending.
        """
        placement = placement_of(spec, manifest, decision)
        try:
            workload, placement, note = plan_workload(
                owner, spec, manifest, decision, placement, nodes, self.dra.dra_only()
            )
            verify_claims(self.kube, owner.namespace, workload.claims)
        except WorkloadError as err:
            raise _Refusal(err.failure, pstatus) from err
        pods = [p["metadata"]["name"] for p in self.pods_of(owner.namespace, owner.name)]
        allocated = allocation_note(self.kube, owner.namespace, workload.claims, pods)
        return workload, placement, explain(explain(pstatus, note), allocated)

    def _prune(self, owner: Owner, workload: Workload, outcome: Outcome, spec_changed: bool) -> list[str]:
        """ResourceClaimTemplates no longer rendered go (their spec is immutable, so a change renames them);
        looked for only when a template was just made or the spec changed, not on every pass."""
        made = any(a.startswith("ResourceClaimTemplate/") for a in outcome.applied)
        if not (made or spec_changed):
            return []
        return prune_templates(self.kube, owner, workload.claims.template_names)

    def _workload_state(
        self, owner: Owner, spec: NIMServiceSpec, applied: dict[str, dict[str, Any]]
    ) -> dict[str, Any] | None:
        """The Deployment, or the LeaderWorkerSet in the Deployment's terms, that readiness is read from:
        as just applied, else as the watch delivered it, else one GET (none when it is known absent)."""
        if spec.multi_node is None:
            deployment = applied.get("Deployment") or self._deployments.get((owner.namespace, owner.name))
            key = ("apps/v1", "Deployment", owner.namespace, owner.name)
        else:
            with self._guard:
                deployment = applied.get(lws_render.KIND) or self._groups.get((owner.namespace, owner.name))
            key = (lws_render.API_VERSION, lws_render.KIND, owner.namespace, lws_render.lws_name(owner))
        kserve = spec.inference_platform == "kserve"  # KServe's Deployment is not ours to read
        if deployment is None and not kserve and self.kube.applied.exists(key) is not False:
            deployment = self.kube.get(*key)
        return deployment if spec.multi_node is None else lws_render.readiness_view(deployment)

    def _claim_problem(self, owner: Owner, spec: NIMServiceSpec, mount: CacheMount | None) -> PodProblem | None:
        """A claim the pods mount that is not bound (read only while replicas are missing)."""
        claim = pvc_name(owner, spec, mount)
        if claim is None:
            return None
        return unbound_claim(claim, self.kube.get("v1", "PersistentVolumeClaim", owner.namespace, claim))

    def _surge_blocked(self, owner: Owner) -> bool:
        """Whether a rollout is under way and its new pod cannot be scheduled for lack of room (a surge pod
        waiting for a GPU that the old pod holds): then the default strategy replaces in place."""
        deployment = self._deployments.get((owner.namespace, owner.name))
        status = (deployment or {}).get("status") or {}
        if int(status.get("updatedReplicas") or 0) >= int(status.get("replicas") or 0):
            return False
        return any(
            (problem := pod_health(pod).problem) is not None
            and problem.reason == "Unschedulable"
            and "Insufficient" in problem.message
            for pod in self.pods_of(owner.namespace, owner.name)
        )

    def _cache_mount(
        self, namespace: str, spec: NIMServiceSpec, placement: Placement
    ) -> tuple[CacheMount | None, Failure | None]:
        """The NIMCache the spec mounts, from its watch (or one GET before its first event); a Ready cache
        that does not hold the profile to serve is a refusal."""
        ref = spec.storage.nim_cache if spec.storage else None
        if ref is None:
            return None, None
        cache = self.caches.get((namespace, ref.name))
        if cache is None:
            cache = self.kube.get_own(c.CACHE_PLURAL, namespace, ref.name)
        mount, waiting = cache_mount(namespace, ref.name, cache)
        if mount is not None:
            pinned, field = spec.pinned_profile
            served = placement.profile.id if placement.profile is not None else pinned
            missing = profile_not_held(namespace, ref.name, mount, served, field if pinned else "status.profile.id")
            if missing is not None:
                raise _Refusal(missing)
        return mount, waiting

    def _remember_mount(self, key: tuple[str, str], spec: NIMServiceSpec) -> None:
        ref = spec.storage.nim_cache if spec.storage else None
        with self._guard:
            if ref is None:
                self._mounts.pop(key, None)
            else:
                self._mounts[key] = ref.name

    def services_mounting(self, namespace: str, cache: str) -> list[tuple[str, str]]:
        """Keys of the NIMServices last seen mounting this NIMCache (to re-run when it changes)."""
        with self._guard:
            return [key for key, name in self._mounts.items() if key[0] == namespace and name == cache]

    def _announce(self, body: Mapping[str, Any], owner: Owner, problem: PodProblem | None) -> None:
        """A Warning Event when a pod problem appears or its reason changes; nothing while it persists.

        Keyed on the reason alone: the message of a lasting problem may move (another pod, a scheduler
        message with new node counts) without being news. A problem that clears and comes back is news.
        """
        before = self._announced.get(owner.uid)
        if problem is None:
            self._announced.pop(owner.uid, None)
            return
        self._announced[owner.uid] = problem
        if before is None or before.reason != problem.reason:
            self.emit(body, "Warning", problem.reason, problem.message)

    def _choose(
        self,
        spec: NIMServiceSpec,
        manifest: ProfileSet | None,
        previous: NIMServiceStatus | None,
        generation: int,
        nodes: list[NodeGpuFacts],
        key: tuple[str, str],
        *,
        about: str = "",
    ) -> tuple[ProfileDecision | None, ProfileStatus]:
        """The profile decision and its status; none when no manifest is known or the user's DRA claims
        choose the devices (the runtime then chooses from the GPUs it gets). ``nodes`` are the schedulable
        nodes as selection sees them (DRA-only nodes described by their ResourceSlices).

        The earlier decision sticks while the spec fields it was made from are unchanged (a replicas, env
        or label edit never moves a running service) and a node of its product remains, cordoned or not
        (maintenance is not removal). Otherwise the best profile for the schedulable nodes is chosen, and
        the reason says why the service moved.
        """
        if spec.dra_resources:
            reason = (
                "spec.draResources chooses the devices: no GPUs or GPU products are added; the runtime selects "
                "its profile from the GPUs allocated to it"
            )
            return None, profile_status(None, unmanaged_reason=reason)
        if manifest is None:
            # Where the manifest would have come from, and why it did not (see manifest_source).
            reason = f"{about}{AS_SPECIFIED}"
            return None, profile_status(None, unmanaged_reason=reason)
        inputs = placement_inputs(spec)
        before = previous.profile if previous is not None else None
        same_inputs = before is not None and (
            before.inputs == inputs
            # Written by an operator that did not record inputs: the same generation means the same spec.
            or (before.inputs is None and previous is not None and previous.observed_generation == generation)
        )
        sticky = before.id if before is not None and same_inputs else None
        schedulable = selection_view(spec, nodes)
        decision: ProfileDecision | None = None
        # Free GPUs (what other pods leave) and the autoscalers' pools this spec's pods may use.
        tolerations = pod_tolerations(spec)
        try:
            if sticky:
                everywhere, pools = self.capacity.for_service(
                    key, selection_view(spec, nodes + list(self.cordoned.values())), tolerations
                )
                kept = decide(
                    spec, manifest, everywhere, previous=sticky, capacity=pools, previous_pools=kept_pools(before)
                )
                decision = kept if kept.profile.id == sticky else None
            if decision is None:
                fresh, pools = self.capacity.for_service(key, schedulable, tolerations)
                decision = decide(spec, manifest, fresh, previous=None, capacity=pools)
        except ProfileError as err:
            rejected = [Rejected(id=r.id, why=r.why) for r in err.rejected]
            failed = ProfileStatus(reason=str(err), rejected=rejected, inputs=inputs)
            pinned, field = spec.pinned_profile
            if pinned and manifest.profile(pinned) is None:
                raise _Refusal(Failure("UnknownProfile", f"{field}: {err}"), failed) from err
            raise _Refusal(Failure("NoProfileFits", str(err)), failed) from err
        status = profile_status(decision, manifest=manifest)
        status.inputs = inputs
        unchanged_spec = previous is not None and previous.observed_generation == generation
        if sticky and unchanged_spec and before is not None and _same_placement(before, status):
            # Kept where it was and nothing asked again: how many GPUs are free at this moment (other
            # services' pods come and go) is not news for this one, so its text stays as written until the
            # next spec change.
            status.reason, status.placement, status.moved = before.reason, before.placement, before.moved
            return decision, status
        if before is not None and before.id and before.id != decision.profile.id:
            why = (
                f"no node of {', '.join(before.gpu_products) or 'its kind'} remains"
                if sticky
                else "the spec fields it was chosen from changed"
            )
            status.moved = f"from {before.id}: {why}"
        elif before is not None and before.id == decision.profile.id:
            status.moved = before.moved  # the last move stays explained until the next one
        if status.moved:
            status.reason = f"{status.reason} (moved {status.moved})"
        return decision, status

    def _apply_children(
        self, owner: Owner, children: list[Child]
    ) -> tuple[Outcome, dict[str, dict[str, Any]], list[str]]:
        """Apply what changed and delete what is off, all or nothing; optional integrations degrade.

        When something of this service exists already, every changed child is first validated by a
        server-side dry run, so a refused one leaves every running object as it was. A service created
        from nothing skips the dry runs (they would double the writes of every creation): its children are
        applied Deployment first, and if a later one is refused, the ones this pass created are deleted.
        An optional child whose API the cluster does not serve is left out and named (the third value).
        """
        changed = [ch for ch in children if ch.body is not None and self.kube.needs_apply(ch.body)]
        for child in changed:
            if child.kind == "PersistentVolumeClaim" and child.body is not None and not self.kube.knows(child.body):
                self._refuse_foreign_claim(owner, child.name)
        missing: list[str] = []
        recreate: set[str] = set()
        if any(ch.body is not None and self.kube.knows(ch.body) for ch in changed):
            missing, recreate = self._dry_run(changed)
        for child in changed:
            if child.kind == "Deployment" and child.body is not None and self.kube.knows(child.body):
                self._hand_over_replicas(owner, child.body)
        outcome = Outcome(status=NIMServiceStatus())
        live: dict[str, dict[str, Any]] = {}
        created: list[dict[str, Any]] = []
        try:
            # The workload first (a Deployment, or KServe's InferenceService): if it is refused, or its API is
            # absent, nothing else was created, and nothing is created and rolled back on every retry.
            for child in sorted(changed, key=lambda ch: ch.kind not in WORKLOAD_KINDS):
                body = child.body or {}
                if child.kind in recreate:
                    self._recreate(owner, child)
                try:
                    obj, was_created = self.kube.apply(body)
                except KindNotServed as err:
                    missing.append(_missing_api(child, err))
                    continue
                if child.name == owner.name:  # not the endpoint picker's Deployment or Service
                    live[child.kind] = obj
                outcome.applied.append(f"{child.kind}/{child.name}")
                if was_created:
                    created.append(body)
        except (ChildRejected, _Refusal) as err:
            for body in created:
                self.kube.delete(body["apiVersion"], body["kind"], owner.namespace, body["metadata"]["name"])
            if isinstance(err, _Refusal):
                raise
            raise _Refusal(Failure("InvalidSpec", str(err))) from err
        for child in children:
            if child.body is None and self.kube.delete_owned(
                child.api_version, child.kind, owner.namespace, child.name, owner.uid
            ):
                outcome.deleted.append(f"{child.kind}/{child.name}")
        return outcome, live, missing

    def _dry_run(self, changed: list[Child]) -> tuple[list[str], set[str]]:
        """Validate every changed child before the first write; drops the optional ones the cluster does
        not serve from ``changed``. Returns their Degraded texts, and the kinds to re-create.

        A child someone else edited may refuse our apply although our spec is valid: their fields stay
        (server-side apply keeps what another manager owns), and ours beside them can be invalid (a port
        renumbered by hand duplicates our port's name). Such a child is re-created from the spec.
        """
        missing: list[str] = []
        recreate: set[str] = set()
        for child in list(changed):
            body = child.body or {}
            try:
                self.kube.apply(body, dry_run=True)
            except KindNotServed as err:
                changed.remove(child)
                missing.append(_missing_api(child, err))
            except ChildRejected as err:
                if child.kind in RECREATABLE_KINDS and self.kube.applied.edited_by_others(key_of(body)):
                    recreate.add(child.kind)
                    continue
                raise _Refusal(Failure("InvalidSpec", str(err))) from err
        return missing, recreate

    def _recreate(self, owner: Owner, child: Child) -> None:
        meta = {"metadata": {"name": owner.name, "namespace": owner.namespace, "uid": owner.uid}}
        body = {"apiVersion": c.API_VERSION, "kind": c.KIND, **meta}
        self.emit(
            body,
            "Warning",
            "Recreated",
            f"{child.kind} {child.name} was edited by someone else into a shape the spec cannot be applied "
            "over; it was deleted and created again from the spec",
        )
        self.kube.delete(child.api_version, child.kind, owner.namespace, child.name)

    def _keep_replicas(self, owner: Owner, spec: NIMServiceSpec, children: list[Child]) -> list[Child]:
        """Autoscaling turned off with no ``spec.replicas``: the count the autoscaler left is kept (the
        Deployment is applied without the field, which stays with its current owner) instead of falling to
        the default of one. A count in the spec, or a new Deployment, is applied as rendered."""
        if spec.autoscaling or spec.replicas is not None:
            return children
        current = self._deployments.get((owner.namespace, owner.name))
        if current is None or _applies_replicas(current) or not _replicas_owners(current):
            return children
        kept = []
        for child in children:
            if child.kind == "Deployment" and child.body is not None and "replicas" in child.body["spec"]:
                body = {**child.body, "spec": {k: v for k, v in child.body["spec"].items() if k != "replicas"}}
                child = dataclasses.replace(child, body=body)
            kept.append(child)
        return kept

    def _hand_over_replicas(self, owner: Owner, body: dict[str, Any]) -> None:
        """Before an apply that stops setting ``spec.replicas`` (autoscaling turned on), give the field to
        another manager at its current value.

        Server-side apply removes a field its manager no longer sets when no other manager owns it, and the
        Deployment's default (1) would then replace, say, 3 running replicas until the autoscaler acts. With
        a second owner the field keeps its value; the autoscaler takes it over from there.
        """
        if "replicas" in body["spec"]:
            return
        current = self._deployments.get((owner.namespace, owner.name)) or self.kube.get(
            "apps/v1", "Deployment", owner.namespace, owner.name
        )
        if current is None or not _applies_replicas(current):
            return
        self.kube.hand_over(
            "apps/v1", "Deployment", owner.namespace, owner.name, {"spec": {"replicas": current["spec"]["replicas"]}}
        )

    def _refuse_foreign_claim(self, owner: Owner, name: str) -> None:
        """A claim to create that already exists must be this NIMService's: a user's claim of the same name
        is never taken over (server-side apply would, and the NIMService's settings would land on it)."""
        live = self.kube.get("v1", "PersistentVolumeClaim", owner.namespace, name)
        labels = (live or {}).get("metadata", {}).get("labels") or {}
        ours = labels.get(c.LABEL_MANAGED_BY) == c.MANAGED_BY and labels.get(c.LABEL_INSTANCE) == owner.name
        if live is None or ours:
            return
        raise _Refusal(
            Failure(
                "PVCNotOwned",
                f"PersistentVolumeClaim {name} exists and was not created for this NIMService: set "
                "spec.storage.pvc.create to false to mount it as it is, or name another claim in spec.storage.pvc.name",
            )
        )

    def _fail(
        self,
        body: Mapping[str, Any],
        owner: Owner,
        spec: NIMServiceSpec | None,
        generation: int,
        previous: NIMServiceStatus | None,
        pstatus: ProfileStatus | None,
        failure: Failure,
    ) -> Outcome:
        """Report the failure and touch no child: what ran before keeps running, nothing half-applies."""
        status = compute_status(
            owner=owner,
            spec=spec,
            generation=generation,
            previous=previous,
            profile=pstatus,
            served_model_name=None,
            failure=failure,
            deployment=None,
            now=_now(),
        )
        written = self._write_status(body, owner, previous, status)
        return Outcome(status=status, status_written=written)

    def report_error(self, body: Mapping[str, Any], err: BaseException) -> None:
        """A reconcile failed on the cluster's side (an API error, a timeout, missing permissions), not the
        spec's: the Failed condition stays False with a reason saying what went wrong and that it is being
        retried; the state and everything else stay as they were (the pods may well be serving)."""
        meta = body["metadata"]
        previous = self.last_status(body)
        if previous is None:
            previous = NIMServiceStatus(observed_generation=int(meta.get("generation") or 0))
        reason, message = _api_problem(err)
        conditions = [cond for cond in previous.conditions if cond.type != "Failed"]
        before = next((cond for cond in previous.conditions if cond.type == "Failed"), None)
        since = before.last_transition_time if before is not None and before.status == "False" else _now()
        conditions.insert(
            1 if conditions else 0,
            Condition(
                type="Failed",
                status="False",
                reason=reason,
                message=message,
                observed_generation=previous.observed_generation,
                last_transition_time=since,
            ),
        )
        status = previous.model_copy(update={"conditions": conditions})
        owner = Owner(meta["name"], meta["namespace"], meta["uid"])
        try:
            self._write_status(body, owner, previous, status)
        except Exception as write_err:  # the API is what failed: the retry will say it again
            log.debug("could not report %s on %s/%s: %s", reason, owner.namespace, owner.name, write_err)

    def _write_status(
        self, body: Mapping[str, Any], owner: Owner, previous: NIMServiceStatus | None, status: NIMServiceStatus
    ) -> bool:
        if previous is not None and previous == status:
            return False
        payload = status.model_dump(by_alias=True, mode="json")
        self.kube.patch_status(owner.namespace, owner.name, payload)
        self._written[owner.uid] = status
        before_state = previous.state if previous else None
        before_profile = previous.profile.id if previous and previous.profile else None
        now_profile = status.profile.id if status.profile else None
        if now_profile and now_profile != before_profile:
            self.emit(body, "Normal", "ProfileSelected", status.profile.reason if status.profile else "")
        served = owner.uid in self._served or before_state == "Ready"
        if status.state == "Ready":
            self._served.add(owner.uid)
        if status.state != before_state:
            failed = next((c for c in status.conditions if c.type == "Failed" and c.status == "True"), None)
            # A failure is always news. A service's first rollout is not (status says each step, and Ready's
            # lastTransitionTime when it ended; its ProfileSelected Event, if any, says what was chosen): a
            # thousand services applied at once post no thousand Events. Once it has served, every change
            # of state is.
            if failed is not None:
                self.emit(body, "Warning", failed.reason, failed.message)
            elif served:
                self.emit(body, "Normal", status.state, f"state {before_state} -> {status.state}")
        self._announce_route(body, previous, status)
        return True

    def _announce_route(
        self, body: Mapping[str, Any], previous: NIMServiceStatus | None, status: NIMServiceStatus
    ) -> None:
        """A Warning Event when the routes stop attaching, or why they do not changes (a Gateway missing)."""
        now = next((c for c in status.conditions if c.type == ROUTED_CONDITION), None)
        before = next((c for c in previous.conditions if c.type == ROUTED_CONDITION), None) if previous else None
        if now is not None and now.status == "False" and (before is None or before.reason != now.reason):
            self.emit(body, "Warning", now.reason, now.message)
