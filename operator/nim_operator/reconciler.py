"""One level-based reconcile of one NIMService: read facts, decide, render, apply, report.

Called for every change of the NIMService, of its Deployment, of its pods' health and of the cluster's
GPU nodes; it never branches on which event happened. Unchanged children and unchanged status cost no
write.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes import client
from pydantic import ValidationError

from nim_operator import constants as c
from nim_operator import metrics
from nim_operator.api.spec import Condition, NIMServiceSpec, NIMServiceStatus, ProfileStatus, Rejected
from nim_operator.cache_mount import CacheMount, cache_mount, profile_not_held
from nim_operator.child_apply import ChildApplier, Refusal
from nim_operator.cluster_capacity import ClusterCapacity
from nim_operator.discovery import ManifestDiscovery
from nim_operator.dra_inventory import DraInventory
from nim_operator.integration_status import status_extras
from nim_operator.integrations import IngressClasses, ingress_problems
from nim_operator.kube import EventSink, Kube
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
from nim_operator.render import Owner, render_children
from nim_operator.render import lws as lws_render
from nim_operator.render.deployment import pvc_name
from nim_operator.render.router import ROUTED_CONDITION, route_refusal
from nim_operator.slim import slim, slim_deployment, slim_pod
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


def _parse_spec(body: Mapping[str, Any]) -> NIMServiceSpec:
    try:
        return NIMServiceSpec.model_validate(body.get("spec") or {})
    except ValidationError as err:
        raise Refusal(Failure("InvalidSpec", _validation_message(err))) from err


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
        self._children = ChildApplier(kube, self.emit, self._deployments.get)
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
                raise Refusal(choice.refusal)
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
                raise Refusal(Failure(*refused))
            if waiting is None:
                blocked = self._surge_blocked(owner)
                children = render_children(
                    owner, spec, placement, mount, surge_blocked=blocked, group=workload.group, claims=workload.claims
                )
                children = self._children.keep_replicas(owner, spec, children)
                done = self._children.apply(owner, children)
                outcome = Outcome(status=NIMServiceStatus(), applied=done.applied, deleted=done.deleted)
                applied, missing = done.live, done.missing
                missing += ingress_problems([ch.body for ch in children if ch.body], self.ingress_classes)
                spec_changed = previous is not None and previous.observed_generation != generation
                outcome.deleted += self._prune(owner, workload, outcome, spec_changed)
            else:
                # Nothing changes while the cache fills: running pods keep what they mount.
                outcome, applied = Outcome(status=NIMServiceStatus()), {}
        except Refusal as refusal:
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
            raise Refusal(err.failure, pstatus) from err
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
                raise Refusal(missing)
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
                raise Refusal(Failure("UnknownProfile", f"{field}: {err}"), failed) from err
            raise Refusal(Failure("NoProfileFits", str(err)), failed) from err
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
