"""Which manifest an image carries: learned once per image by the probe Job, then remembered.

A NIMService or NIMCache asks :meth:`ManifestDiscovery.lookup` on each reconcile. The first ask starts
the probe (see :mod:`manifest_probe`) in the asker's namespace, where its pull secrets are; later asks,
from any namespace, wait for that probe and then read the answer from memory. The answer is also kept
in a ConfigMap beside the probe, and the Job is deleted once its log is read.

A probe that fails (an image that cannot be pulled, a log that cannot be read, a deadline) is an
answer too: the image's manifest is unknown, and the askers go on without it, saying so in status. It
is remembered for ``retry_seconds``, so a fixed pull secret is picked up later without a Job storm. A
probe whose Job ended (failed, or finished with a log that cannot be used) keeps its Job as the record
of that failure until the Job's TTL removes it; a pod stuck pulling is stopped (its Job deleted).

A restarted operator learns both records from the start-up listing of its children (:meth:`seen`), so
it neither probes again nor asks per image: a restart writes nothing here.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from pydantic import ValidationError

from nim_operator import constants as c
from nim_operator.kube import ChildRejected, Kube
from nim_operator.manifest_probe import (
    ANNOTATION_IMAGE,
    CONTAINER,
    LABEL_PROBE,
    LOG_LIMIT_BYTES,
    ProbeRequest,
    key_hash,
    object_name,
    pod_of_probe,
    probe_labels,
    probing_message,
    read_probe,
    render_probe_job,
)
from nim_operator.slim import slim
from nim_runtime.profiles import ImageListing, ImageManifest, ManifestFormatError, RuntimeListing, parse_listing

log = logging.getLogger(__name__)

#: How long an image whose probe failed is taken as having no known manifest before it is probed again.
RETRY_SECONDS = 600.0
#: A node whose kubelet does not answer (a simulated one) must not hold a reconcile longer than this.
LOG_TIMEOUT_SECONDS = 15.0
#: Who waits for a probe: (kind, namespace, name) of a NIMService or NIMCache.
Waiter = tuple[str, str, str]


@dataclass(frozen=True)
class Known:
    """The image's answer: its listing, or None when it carries no manifest at all."""

    image: str
    listing: ImageListing | None
    digest: str | None = None
    #: Seconds from the probe Job's creation to its answer being read (None when read from a ConfigMap).
    seconds: float | None = None

    @property
    def summary(self) -> str:
        if self.listing is None:
            return f"{self.image} carries no model manifest"
        if isinstance(self.listing, RuntimeListing):
            return f"{self.image} runs nim-runtime {self.listing.runtime} ({len(self.listing.models)} models)"
        return f"{self.image} lists {len(self.listing.profiles)} profiles ({self.listing.nim_schema} manifest)"


@dataclass(frozen=True)
class Unknown:
    """The probe failed; ``message`` says why in the kubelet's or the Job controller's words."""

    image: str
    reason: str
    message: str


@dataclass(frozen=True)
class Probing:
    image: str
    message: str


Discovery = Known | Unknown | Probing


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _age_seconds(obj: Mapping[str, Any]) -> float | None:
    created = (obj.get("metadata") or {}).get("creationTimestamp")
    if not created:
        return None
    try:
        when = datetime.datetime.strptime(str(created), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return None
    return max(0.0, (_now() - when).total_seconds())


def _record(request: ProbeRequest, known: Known) -> dict[str, Any]:
    """The ConfigMap that keeps an answer (the listing as JSON: our own types, read back exactly)."""
    listing = known.listing
    kind = "none" if listing is None else ("runtime" if isinstance(listing, RuntimeListing) else "nim")
    data = {"image": known.image, "key": request.key, "kind": kind}
    if listing is not None:
        data["listing.json"] = listing.model_dump_json(by_alias=True)
    if known.digest:
        data["digest"] = known.digest
    if known.seconds is not None:
        data["seconds"] = f"{known.seconds:.1f}"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": object_name(request.key),
            "namespace": request.namespace,
            "labels": probe_labels(request.key),
        },
        "data": data,
    }


def _from_record(data: Mapping[str, str]) -> Known | None:
    """The answer a ConfigMap keeps, or None when it is unreadable (written by another version)."""
    try:
        kind = data.get("kind")
        listing: ImageListing | None = None
        if kind == "runtime":
            listing = RuntimeListing.model_validate_json(data["listing.json"])
        elif kind == "nim":
            listing = ImageManifest.model_validate_json(data["listing.json"])
        elif kind != "none":
            return None
        seconds = float(data["seconds"]) if data.get("seconds") else None
        return Known(str(data.get("image") or ""), listing, data.get("digest"), seconds)
    except (KeyError, ValueError, ValidationError):
        return None


class ManifestDiscovery:
    """The probes in flight, their answers, and who waits for them. Thread-safe."""

    def __init__(
        self, kube: Kube, *, retry_seconds: float = RETRY_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.kube = kube
        self.retry_seconds = retry_seconds
        self.clock = clock
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._known: dict[str, Known] = {}
        self._failed: dict[str, tuple[Unknown, float]] = {}
        #: Probes in flight by key: the namespace they run in.
        self._probing: dict[str, str] = {}
        self._jobs: dict[str, dict[str, Any]] = {}
        self._pods: dict[str, dict[str, dict[str, Any]]] = {}
        self._waiters: dict[str, set[Waiter]] = {}
        #: Key hashes whose probe has answered: when their Job is gone, nobody needs to wait any more.
        self._answered: set[str] = set()
        #: The outcome each probe's askers last read (from :func:`read_probe`), by key hash.
        self._views: dict[str, tuple[str | None, bool, str, str]] = {}

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def known(self, key: str) -> Known | None:
        with self._guard:
            return self._known.get(key)

    def lookup(self, request: ProbeRequest, waiter: Waiter) -> Discovery:
        """The image's answer, or that it is being probed (``waiter`` is re-run when that changes)."""
        key = request.key
        with self._guard:
            self._waiters.setdefault(key_hash(key), set()).add(waiter)
        with self._lock(key):
            found = self._cached(request)
            if found is not None:
                return found
            with self._guard:
                elsewhere = self._probing.get(key)
            if elsewhere is not None and elsewhere != request.namespace:
                return Probing(request.image, probing_message(request.image, elsewhere))
            return self._probe(request)

    def _cached(self, request: ProbeRequest) -> Known | Unknown | None:
        key = request.key
        with self._guard:
            known = self._known.get(key)
            failed = self._failed.get(key)
        if known is not None:
            return known
        if failed is not None and failed[1] > self.clock():
            return failed[0]
        with self._guard:
            if key in self._probing:
                return None  # in flight: its answer is not kept anywhere yet
        data = self.kube.read_config_map(request.namespace, object_name(key))
        if data is not None and data.get("key") == key and (known := _from_record(data)) is not None:
            with self._guard:
                self._known[key] = known
            return known
        return None

    def _probe(self, request: ProbeRequest) -> Discovery:
        key = request.key
        name = object_name(key)
        with self._guard:
            job = self._jobs.get(key_hash(key))
        if job is not None and (where := job["metadata"].get("namespace")) != request.namespace:
            if job["metadata"].get("deletionTimestamp"):
                job = None  # going: a new probe runs here, with this namespace's pull secrets
            else:
                # A probe elsewhere (running, or ended in a failure kept until the Job's TTL) answers for
                # every namespace, as its answer in memory does: read there, not probed again here.
                request = dataclasses.replace(request, namespace=where)
        if job is None:
            job = self.kube.get("batch/v1", "Job", request.namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            with self._guard:
                self._answered.discard(key_hash(key))
            if job is None:
                try:
                    self.kube.apply(render_probe_job(request))
                except ChildRejected as err:
                    return self._fail(request, "ProbeRejected", str(err))
                log.info("probing the manifest of %s in %s", request.image, request.namespace)
            with self._guard:
                self._probing[key] = request.namespace
            return Probing(request.image, probing_message(request.image, request.namespace))
        with self._guard:
            self._probing[key] = request.namespace
        outcome = read_probe(job, self._pods_of(request.namespace, key, job), request.image)
        if outcome.failed:
            self._finish(request, keep_job=outcome.ended)
            return self._fail(request, outcome.reason, outcome.message)
        if outcome.done_pod is None:
            return Probing(request.image, outcome.message)
        return self._read(request, job, outcome.done_pod, outcome.digest)

    def _read(self, request: ProbeRequest, job: Mapping[str, Any], pod: str, digest: str | None) -> Discovery:
        try:
            text = self.kube.pod_log(
                request.namespace, pod, CONTAINER, limit_bytes=LOG_LIMIT_BYTES, timeout=LOG_TIMEOUT_SECONDS
            )
        except (client.ApiException, OSError, ValueError) as err:
            self._finish(request, keep_job=True)
            why = f"{err.status} {err.reason}" if isinstance(err, client.ApiException) else repr(err)
            return self._fail(
                request,
                "ManifestUnreadable",
                f"the manifest probe of {request.image} finished, but its log could not be read: {why}",
            )
        try:
            listing = parse_listing(text, image=request.image)
        except (ManifestFormatError, ValidationError) as err:
            self._finish(request, keep_job=True)
            return self._fail(request, "InvalidManifest", f"the manifest of {request.image} cannot be used: {err}")
        known = Known(request.image, listing, digest, _age_seconds(job))
        try:
            self.kube.create_config_map(_record(request, known))
        except client.ApiException as err:  # the answer stays in memory; a restart probes again
            log.warning("could not keep the manifest of %s in a ConfigMap: %s", request.image, err)
        with self._guard:
            self._known[request.key] = known
            self._failed.pop(request.key, None)
        self._finish(request)
        log.info("manifest of %s: %s, in %s s", request.image, known.summary, known.seconds)
        return known

    def _fail(self, request: ProbeRequest, reason: str, message: str) -> Unknown:
        unknown = Unknown(request.image, reason, message)
        with self._guard:
            self._failed[request.key] = (unknown, self.clock() + self.retry_seconds)
        log.info("manifest of %s is unknown: %s", request.image, message)
        return unknown

    def _finish(self, request: ProbeRequest, *, keep_job: bool = False) -> None:
        """The probe has answered: its Job (and pod) go, from the cluster and from memory, unless the Job is
        kept as the record of a failure (the Job controller removes it after its TTL)."""
        with self._guard:
            self._answered.add(key_hash(request.key))
            self._probing.pop(request.key, None)
            if keep_job:
                return
            self._jobs.pop(key_hash(request.key), None)
            self._pods.pop(key_hash(request.key), None)
        self.kube.delete("batch/v1", "Job", request.namespace, object_name(request.key))

    def _pods_of(self, namespace: str, key: str, job: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The pods of this Job only (a deleted earlier probe's pod may still be in memory)."""
        with self._guard:
            pods = list(self._pods.get(key_hash(key), {}).values())
        if not pods:
            # Before the pod watch has told us (the operator just started): one list.
            path = f"/api/v1/namespaces/{namespace}/pods"
            query = [("labelSelector", f"{LABEL_PROBE}={key_hash(key)}")]
            pods = self.kube.request("GET", path, query=query)["items"]
        return _of_job(pods, job)

    def seen(self, obj: dict[str, Any]) -> None:
        """A probe Job or answer ConfigMap an earlier run left, from the start-up listing (before any
        reconcile): a failed probe's kept Job and a kept answer are both known without asking again."""
        if obj.get("kind") == "ConfigMap":
            data = obj.get("data") or {}
            known = _from_record(data)
            if known is not None and data.get("key"):
                with self._guard:
                    self._known.setdefault(data["key"], known)
        elif obj.get("kind") == "Job":
            self.observe(obj, deleted=False)

    def observe(self, obj: dict[str, Any], *, deleted: bool) -> list[Waiter]:
        """A probe Job or pod from its watch; who to re-run (empty when it is none of ours)."""
        hashed = pod_of_probe(obj)
        if hashed is None:
            return []
        name = obj["metadata"]["name"]
        with self._guard:
            waiters = sorted(self._waiters.get(hashed, ()))
            if obj.get("kind") == "Job":
                if deleted:
                    self._jobs.pop(hashed, None)
                    self._pods.pop(hashed, None)
                    self._views.pop(hashed, None)
                    if hashed in self._answered:
                        # The last event of an answered probe: everyone re-runs once more, then the
                        # watch of this image stops re-running them (a new probe registers them again).
                        self._waiters.pop(hashed, None)
                    return waiters
                self._jobs[hashed] = slim(obj)
            elif deleted:
                self._pods.get(hashed, {}).pop(name, None)
            else:
                self._pods.setdefault(hashed, {})[name] = slim(obj)
            return waiters if self._moved(hashed) else []

    def _moved(self, hashed: str) -> bool:
        """Whether the probe's outcome, as its askers read it, changed (guard held). A probe's Job and pod
        have some ten events; a thousand services of one image re-run for the two or three that matter."""
        job = self._jobs.get(hashed)
        if job is None:
            return True  # a pod before its Job: nothing to compare with
        image = (job["metadata"].get("annotations") or {}).get(ANNOTATION_IMAGE, "")
        outcome = read_probe(job, _of_job(self._pods.get(hashed, {}).values(), job), image)
        view = (outcome.done_pod, outcome.failed, outcome.reason, outcome.message)
        moved = self._views.get(hashed) != view
        self._views[hashed] = view
        return moved

    def forget_waiter(self, waiter: Waiter) -> None:
        with self._guard:
            for waiters in self._waiters.values():
                waiters.discard(waiter)


def _of_job(pods: Iterable[dict[str, Any]], job: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The pods of this Job only (a deleted earlier probe's pod may still be known)."""
    uid = job["metadata"].get("uid")
    return [p for p in pods if not uid or any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])]


def is_probe(obj: Mapping[str, Any]) -> bool:
    return (
        pod_of_probe(obj) is not None
        and (obj.get("metadata") or {}).get("labels", {}).get(c.LABEL_MANAGED_BY) == c.MANAGED_BY
    )
