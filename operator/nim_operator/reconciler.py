"""One level-based reconcile of one NIMService: read facts, decide, render, apply, report.

Called for every change of the NIMService, of its Deployment, of its pods' health and of the cluster's
GPU nodes; it never branches on which event happened. Unchanged children and unchanged status cost no
write.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from nim_operator import constants as c
from nim_operator import metrics
from nim_operator.api.coverage import UNSUPPORTED_REASON, unsupported_message
from nim_operator.api.spec import NIMServiceSpec, NIMServiceStatus, ProfileStatus, Rejected
from nim_operator.cache_mount import CacheMount, cache_mount
from nim_operator.kube import ChildRejected, Kube
from nim_operator.placement import decide, manifest_for, placement_of, profile_status
from nim_operator.pod_health import PodProblem, find_pod_problem, pod_health, service_of
from nim_operator.render import Child, Owner, render_children
from nim_operator.status import Failure, compute_status
from nim_runtime.profiles import ModelManifest, NodeGpuFacts, ProfileDecision, ProfileError, parse_manifest

log = logging.getLogger(__name__)

MANIFEST_KEY = "manifest.yaml"
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


def _applies_replicas(deployment: Mapping[str, Any]) -> bool:
    """Whether our field manager's apply owns ``spec.replicas`` of this Deployment (and no one else does)."""
    owners = [
        entry
        for entry in deployment.get("metadata", {}).get("managedFields") or []
        if "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})
    ]
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


def _refused(previous: NIMServiceStatus | None, generation: int) -> bool:
    """Whether this generation of the spec was already found invalid."""
    if previous is None or previous.state != "Failed" or previous.observed_generation != generation:
        return False
    return any(c.type == "Failed" and c.status == "True" and c.reason == "InvalidSpec" for c in previous.conditions)


def _resolve_manifest(kube: Kube, namespace: str, spec: NIMServiceSpec) -> ModelManifest | None:
    """The manifest from the named ConfigMap, or the catalog, or None when neither knows the model."""
    if not spec.model_manifest:
        return manifest_for(spec)
    where = f"spec.modelManifest: ConfigMap {namespace}/{spec.model_manifest}"
    data = kube.read_config_map(namespace, spec.model_manifest)
    if data is None:
        raise _Refusal(Failure("InvalidManifest", f"{where} does not exist"))
    if MANIFEST_KEY not in data:
        raise _Refusal(Failure("InvalidManifest", f"{where} has no key {MANIFEST_KEY}"))
    try:
        return parse_manifest(data[MANIFEST_KEY])
    except ValueError as err:
        raise _Refusal(Failure("InvalidManifest", f"{where} holds an invalid manifest: {err}")) from err


class Reconciler:
    """Holds the shared, watched facts (GPU nodes) and serialises work per NIMService."""

    def __init__(self, kube: Kube, emit: EventSink | None = None) -> None:
        self.kube = kube
        self.emit = emit or (lambda body, kind, reason, message: None)
        self.nodes: dict[str, NodeGpuFacts] = {}
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
        # NIMCache bodies by (namespace, name), kept by their watch; and which cache each service mounts.
        self.caches: dict[tuple[str, str], dict[str, Any]] = {}
        self._mounts: dict[tuple[str, str], str] = {}

    def _lock(self, key: tuple[str, str]) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def forget(self, uid: str, *, namespace: str | None = None, name: str | None = None) -> None:
        """Drop what is remembered of a deleted NIMService (its pods too, when its name is given)."""
        self._written.pop(uid, None)
        self._announced.pop(uid, None)
        if namespace is not None and name is not None:
            with self._guard:
                self._pods.pop((namespace, name), None)

    def deployment_seen(self, deployment: dict[str, Any]) -> None:
        """A Deployment from the watch: status reads it instead of a GET, and the apply cache learns it."""
        meta = deployment["metadata"]
        self._deployments[(meta["namespace"], meta["name"])] = deployment
        self.kube.observe(deployment)

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
            pods[meta["name"]] = pod
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
        try:
            spec = _parse_spec(body)
            self._remember_mount((owner.namespace, owner.name), spec)
            if (unsupported := unsupported_message(spec)) is not None:
                # Retried on every pass (not InvalidSpec): an operator that builds the field takes over.
                raise _Refusal(Failure(UNSUPPORTED_REASON, unsupported))
            manifest = _resolve_manifest(self.kube, owner.namespace, spec)
            decision, pstatus = self._choose(spec, manifest, previous, generation)
            placement = placement_of(spec, manifest, decision)
            mount, waiting = self._cache_mount(owner.namespace, spec)
            if waiting is None:
                outcome, applied = self._apply_children(owner, render_children(owner, spec, placement, mount))
            else:
                # Nothing changes while the cache fills: running pods keep what they mount.
                outcome, applied = Outcome(status=NIMServiceStatus()), {}
        except _Refusal as refusal:
            return self._fail(body, owner, spec, generation, previous, refusal.profile or pstatus, refusal.failure)
        deployment = applied.get("Deployment") or self._deployments.get((owner.namespace, owner.name))
        if deployment is None:
            deployment = self.kube.get("apps/v1", "Deployment", owner.namespace, owner.name)
        problem = find_pod_problem(self.pods_of(owner.namespace, owner.name))
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
        )
        outcome.status_written = self._write_status(body, owner, previous, outcome.status)
        ready = next(c for c in outcome.status.conditions if c.type == "Ready")
        # Announced only when status shows it too, so an Event never says what status does not.
        shown = ready.status == "False" and problem is not None and ready.reason == problem.reason
        self._announce(body, owner, problem if shown else None)
        return outcome

    def _cache_mount(self, namespace: str, spec: NIMServiceSpec) -> tuple[CacheMount | None, Failure | None]:
        """The NIMCache the spec mounts, from its watch (or one GET before its first event)."""
        ref = spec.storage.nim_cache if spec.storage else None
        if ref is None:
            return None, None
        cache = self.caches.get((namespace, ref.name))
        if cache is None:
            cache = self.kube.get_own(c.CACHE_PLURAL, namespace, ref.name)
        return cache_mount(namespace, ref.name, cache)

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
        manifest: ModelManifest | None,
        previous: NIMServiceStatus | None,
        generation: int,
    ) -> tuple[ProfileDecision | None, ProfileStatus]:
        """The profile decision and its status; none when no manifest is known (the runtime chooses)."""
        if manifest is None:
            model = spec.model.name if spec.model and spec.model.name else spec.image.repository
            reason = (
                f"no manifest is known for {model}: deployed with the resources and scheduling given in the "
                "spec; the runtime selects its profile"
            )
            return None, profile_status(None, unmanaged_reason=reason)
        same_spec = previous is not None and previous.observed_generation == generation
        sticky = previous.profile.id if same_spec and previous and previous.profile else None
        try:
            decision = decide(spec, manifest, list(self.nodes.values()), previous=sticky)
        except ProfileError as err:
            rejected = [Rejected(id=r.id, why=r.why) for r in err.rejected]
            failed = ProfileStatus(reason=str(err), rejected=rejected)
            if spec.profile and manifest.profile(spec.profile) is None:
                raise _Refusal(Failure("UnknownProfile", f"spec.profile: {err}"), failed) from err
            raise _Refusal(Failure("NoProfileFits", str(err)), failed) from err
        return decision, profile_status(decision)

    def _apply_children(self, owner: Owner, children: list[Child]) -> tuple[Outcome, dict[str, dict[str, Any]]]:
        """Apply what changed and delete what is off, all or nothing.

        Children that exist are validated by a server-side dry run before anything is written, so an
        invalid update changes nothing. New children skip the dry run (it would double the writes of
        every creation): they are applied Deployment first, and if a later one is refused, the ones
        this pass created are deleted again.
        """
        changed = [ch.body for ch in children if ch.body is not None and self.kube.needs_apply(ch.body)]
        for body in changed:
            if body["kind"] == "PersistentVolumeClaim" and not self.kube.knows(body):
                self._refuse_foreign_claim(owner, body["metadata"]["name"])
        try:
            for body in changed:
                if self.kube.knows(body):
                    self.kube.apply(body, dry_run=True)
        except ChildRejected as err:
            raise _Refusal(Failure("InvalidSpec", str(err))) from err
        for body in changed:
            if body["kind"] == "Deployment" and self.kube.knows(body):
                self._hand_over_replicas(owner, body)
        outcome = Outcome(status=NIMServiceStatus())
        live: dict[str, dict[str, Any]] = {}
        created: list[dict[str, Any]] = []
        try:
            for body in sorted(changed, key=lambda b: b["kind"] != "Deployment"):
                obj, was_created = self.kube.apply(body)
                live[body["kind"]] = obj
                outcome.applied.append(f"{body['kind']}/{body['metadata']['name']}")
                if was_created:
                    created.append(body)
        except ChildRejected as err:
            for body in created:
                self.kube.delete(body["apiVersion"], body["kind"], owner.namespace, body["metadata"]["name"])
            raise _Refusal(Failure("InvalidSpec", str(err))) from err
        for child in children:
            if child.body is None and self.kube.delete_owned(
                child.api_version, child.kind, owner.namespace, child.name, owner.uid
            ):
                outcome.deleted.append(f"{child.kind}/{child.name}")
        return outcome, live

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
        if status.state != before_state:
            failed = next((c for c in status.conditions if c.type == "Failed" and c.status == "True"), None)
            kind = "Warning" if failed else "Normal"
            message = failed.message if failed else f"state {before_state or 'none'} -> {status.state}"
            self.emit(body, kind, failed.reason if failed else status.state, message)
        return True
