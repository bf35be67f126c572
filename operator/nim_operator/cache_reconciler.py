"""One level-based reconcile of one NIMCache: its claim, its download Job, its status.

Called for every change of the NIMCache, its Job and the Job's pods, and when a running download's progress
moved (``cache_progress``). The claim is created once and never deleted here (the retention policy decides,
through an owner reference, what a deletion of the NIMCache does); a claim of the same name that this
NIMCache did not create is refused, not adopted, and one it created under an earlier name is reported.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from nim_operator import constants as c
from nim_operator.api.nimcache import NIMCacheSpec, NIMCacheStatus
from nim_operator.cache_profiles import NgcProfiles, ngc_profiles
from nim_operator.cache_progress import Downloading, Key, ProgressPoller
from nim_operator.cache_status import cached_profiles, compute_cache_status
from nim_operator.discovery import ManifestDiscovery
from nim_operator.kube import ChildRejected, EventSink, Kube
from nim_operator.left_behind import LeftBehindFinder, cache_claim_selector
from nim_operator.manifest_probe import probe_request, split_image
from nim_operator.render.cache import CONTAINER, Cache, creates_pvc, job_name, pvc_name, render_job, render_pvc
from nim_operator.slim import slim
from nim_operator.status import Failure
from nim_runtime.profiles import NodeGpuFacts, ScaleUpOption

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cache_of(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, NIMCache name) of a Job or pod a NIMCache made, from its label; None otherwise."""
    meta = obj.get("metadata") or {}
    name = (meta.get("labels") or {}).get(c.LABEL_NIMCACHE)
    return (str(meta.get("namespace") or ""), str(name)) if name else None


def _previous(body: Mapping[str, Any]) -> NIMCacheStatus | None:
    raw = {k: v for k, v in (body.get("status") or {}).items() if k != "kopf"}
    if not raw:
        return None
    try:
        return NIMCacheStatus.model_validate(raw)
    except ValidationError:
        return None


def _validation_message(err: ValidationError) -> str:
    return "; ".join("spec." + ".".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in err.errors())


class CacheReconciler:
    """Serialises work per NIMCache and remembers its Job and pods from their watches."""

    def __init__(
        self,
        kube: Kube,
        emit: EventSink | None = None,
        *,
        runtime_image: str = c.DEFAULT_RUNTIME_IMAGE,
        runtime_pull_secrets: tuple[str, ...] = (),
        progress_interval: float = c.DEFAULT_PROGRESS_INTERVAL_S,
        discovery: ManifestDiscovery | None = None,
        nodes: Callable[[], list[NodeGpuFacts]] = list,
        pools: Callable[[], list[ScaleUpOption]] = list,
    ) -> None:
        self.kube = kube
        #: Puller images' manifests (shared with the NIMService reconciler) and the GPU nodes placement sees.
        self.discovery = discovery or ManifestDiscovery(kube)
        self.nodes = nodes
        #: The node shapes autoscalers may add, for GPU pods: an NGC cache fetches for those too.
        self.pools = pools
        self.emit = emit or (lambda body, kind, reason, message: None)
        self.runtime_image = runtime_image
        self.runtime_pull_secrets = runtime_pull_secrets
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self._pods: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._written: dict[str, NIMCacheStatus] = {}
        self.progress = ProgressPoller(kube, self.downloading, lambda key: None, interval=progress_interval)
        self.left_behind = LeftBehindFinder(kube)

    def start_progress(self, trigger: Callable[[Key], None]) -> None:
        """Read running downloads' progress from now on; ``trigger`` re-runs a cache whose progress moved."""
        self.progress.trigger = trigger
        self.progress.start()

    def downloading(self) -> list[Downloading]:
        """The running pods of the caches' current Jobs: the only logs the progress reader reads."""
        with self._guard:
            keys = list(self._jobs)
        found = []
        for key in keys:
            with self._guard:
                job = self._jobs.get(key)
            for pod in self._job_pods(key, job):
                if (pod.get("status") or {}).get("phase") == "Running":
                    meta = pod["metadata"]
                    found.append(Downloading(key, meta["name"], str(meta.get("uid") or ""), CONTAINER))
        return found

    def _lock(self, key: tuple[str, str]) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def job_seen(self, job: dict[str, Any]) -> tuple[str, str] | None:
        key = cache_of(job)
        if key is not None:
            with self._guard:
                self._jobs[key] = slim(job)
        return key

    def job_gone(self, job: dict[str, Any]) -> tuple[str, str] | None:
        key = cache_of(job)
        if key is not None:
            with self._guard:
                known = self._jobs.get(key)
                if known is not None and known["metadata"].get("uid") == job["metadata"].get("uid"):
                    del self._jobs[key]
            self.kube.forget("batch/v1", "Job", key[0], job["metadata"]["name"])
        return key

    def pod_seen(self, pod: dict[str, Any]) -> tuple[str, str] | None:
        key = cache_of(pod)
        if key is not None:
            with self._guard:
                self._pods.setdefault(key, {})[pod["metadata"]["name"]] = slim(pod)
        return key

    def pod_gone(self, pod: dict[str, Any]) -> tuple[str, str] | None:
        key = cache_of(pod)
        if key is not None:
            with self._guard:
                self._pods.get(key, {}).pop(pod["metadata"]["name"], None)
        return key

    def forget(self, uid: str, namespace: str, name: str) -> None:
        self._written.pop(uid, None)
        self.progress.forget((namespace, name))
        self.left_behind.forget(uid)
        with self._guard:
            self._pods.pop((namespace, name), None)
            self._jobs.pop((namespace, name), None)

    def _job_pods(self, key: tuple[str, str], job: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        """The pods of the current Job only: a replaced Job's pods say nothing about this one."""
        if job is None:
            return []
        uid = job["metadata"].get("uid")
        with self._guard:
            pods = list(self._pods.get(key, {}).values())
        return [
            p for p in pods if not uid or any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])
        ]

    def reconcile(self, body: Mapping[str, Any]) -> NIMCacheStatus:
        meta = body["metadata"]
        with self._lock((meta["namespace"], meta["name"])):
            return self._reconcile(body)

    def _reconcile(self, body: Mapping[str, Any]) -> NIMCacheStatus:
        meta = body["metadata"]
        cache = Cache(meta["name"], meta["namespace"], meta["uid"])
        key = (cache.namespace, cache.name)
        generation = int(meta.get("generation") or 0)
        previous = self._written.get(cache.uid) or _previous(body)
        failure: Failure | None = None
        claim: str | None = None
        pvc: dict[str, Any] | None = None
        job: dict[str, Any] | None = None
        spec: NIMCacheSpec | None = None
        old_claims: tuple[str, ...] = ()
        chosen = NgcProfiles()
        try:
            spec = NIMCacheSpec.model_validate(body.get("spec") or {})
        except ValidationError as err:
            failure = Failure("InvalidSpec", _validation_message(err))
        else:
            claim = pvc_name(cache, spec)
            failure, pvc = self._claim(cache, spec, claim)
            if failure is None and pvc is not None:
                chosen = self._ngc_profiles(cache, spec, previous, generation)
                failure = chosen.failure
                if failure is None and chosen.waiting is None:
                    failure, job = self._job(cache, spec, chosen.ids)
            old_claims = self.left_behind.find(
                owner_uid=cache.uid,
                generation=generation,
                api_version="v1",
                kind="PersistentVolumeClaim",
                namespace=cache.namespace,
                selector=cache_claim_selector(cache.name),
                in_use={claim},
            )
        pods = self._job_pods(key, job)
        status = compute_cache_status(
            generation=generation,
            previous=previous,
            pvc_name=claim,
            pvc=pvc,
            job=job,
            pods=pods,
            failure=failure,
            now=_now(),
            live=self.progress.reading(key, [str(p["metadata"].get("uid") or "") for p in pods]),
            profiles=cached_profiles(spec) if spec is not None else (),
            left_behind=old_claims,
            namespace=cache.namespace,
            waiting=chosen.waiting,
        )
        if spec is not None and spec.source.ngc is not None:
            # An NGC cache's choice is in status from the start: the next reconcile of this generation keeps it.
            status = status.model_copy(update={"profiles": list(chosen.cached)})
        self._write(body, cache, previous, status)
        return status

    def _ngc_profiles(
        self, cache: Cache, spec: NIMCacheSpec, previous: NIMCacheStatus | None, generation: int
    ) -> NgcProfiles:
        """Which profiles an NGC source fetches, from the puller image's manifest and placement."""
        ngc = spec.source.ngc
        if ngc is None:
            return NgcProfiles()
        repository, tag = split_image(ngc.model_puller)
        request = probe_request(
            cache.namespace,
            repository,
            tag,
            pull_secrets=[ngc.pull_secret] if ngc.pull_secret else [],
            node_selector=spec.node_selector,
            tolerations=spec.tolerations,
            user_id=spec.user_id,
            group_id=spec.group_id,
        )
        waiter = (c.CACHE_KIND, cache.namespace, cache.name)
        return ngc_profiles(
            spec,
            lookup=lambda: self.discovery.lookup(request, waiter),
            nodes=self.nodes(),
            previous=previous,
            generation=generation,
            pools=self.pools(),
        )

    def _claim(self, cache: Cache, spec: NIMCacheSpec, claim: str) -> tuple[Failure | None, dict[str, Any] | None]:
        """The live claim (created if asked), or why it cannot be used."""
        if spec.storage.pvc is None:
            what = "spec.storage.hostPath is not supported" if spec.storage.host_path else "spec.storage.pvc is missing"
            return Failure("UnsupportedStorage", f"{what}: a NIMCache lives in a PersistentVolumeClaim"), None
        live = self.kube.get("v1", "PersistentVolumeClaim", cache.namespace, claim)
        if not creates_pvc(spec):
            return None, live  # an existing claim of the user's: used, never changed
        labels = (live or {}).get("metadata", {}).get("labels") or {}
        if live is not None and labels.get(c.LABEL_NIMCACHE) != cache.name:
            return (
                Failure(
                    "PVCNotOwned",
                    f"PersistentVolumeClaim {claim} exists and was not created for this NIMCache: set "
                    "spec.storage.pvc.create to false to use it as it is, or name another claim in "
                    "spec.storage.pvc.name",
                ),
                None,
            )
        desired = render_pvc(cache, spec)
        assert desired is not None
        if live is None or self.kube.needs_apply(desired):
            try:
                live, _ = self.kube.apply(desired)
            except ChildRejected as err:
                return Failure("InvalidStorage", str(err)), live
        return None, live

    def _job(
        self, cache: Cache, spec: NIMCacheSpec, profiles: tuple[str, ...] | None = None
    ) -> tuple[Failure | None, dict[str, Any] | None]:
        desired = render_job(
            cache,
            spec,
            runtime_image=self.runtime_image,
            runtime_pull_secrets=self.runtime_pull_secrets,
            profiles=profiles,
        )
        key = (cache.namespace, cache.name)
        with self._guard:
            live = self._jobs.get(key)
        if live is None:
            live = self.kube.get("batch/v1", "Job", cache.namespace, job_name(cache))
        want = desired["metadata"]["annotations"][c.ANNOTATION_JOB_HASH]
        if live is not None:
            have = (live["metadata"].get("annotations") or {}).get(c.ANNOTATION_JOB_HASH)
            if have == want:
                return None, live
            # A Job's template is immutable: a changed source or setting is a new download (it resumes
            # from the files already in the claim, so unchanged files are not fetched again).
            log.info("replacing download Job of %s/%s: its spec changed", cache.namespace, cache.name)
            self.kube.delete("batch/v1", "Job", cache.namespace, job_name(cache))
            with self._guard:
                self._jobs.pop(key, None)
            return None, None  # the deletion's event brings the next reconcile, which creates the new Job
        try:
            created, _ = self.kube.apply(desired)
        except ChildRejected as err:
            return Failure("InvalidJob", str(err)), None
        return None, created

    def _write(
        self, body: Mapping[str, Any], cache: Cache, previous: NIMCacheStatus | None, status: NIMCacheStatus
    ) -> None:
        if previous is not None and previous == status:
            return
        payload = status.model_dump(by_alias=True, mode="json", exclude_none=True)
        self.kube.patch_status(cache.namespace, cache.name, payload, plural=c.CACHE_PLURAL)
        self._written[cache.uid] = status
        before = previous.state if previous else None
        if status.state != before:
            ready = next(c for c in status.conditions if c.type == "Ready")
            kind = "Warning" if status.state == "Failed" else "Normal"
            self.emit(body, kind, ready.reason, ready.message or f"state {before or 'none'} -> {status.state}")
