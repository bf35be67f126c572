"""Objects a rename left behind: claims and Services created under a name the spec no longer uses.

A renamed claim (``spec.storage.pvc.name`` of a NIMService or NIMCache changed, or a NIMService's storage
moved elsewhere) keeps the old claim: it holds weights, and no reconcile deletes a claim that holds weights.
A renamed Service (``spec.expose.service.name``) keeps the old one routing to the pods, so clients of the
old name keep working until someone decides they are gone. Neither is left unreported: status names each
old object and what to do (a ``LeftBehind`` condition, present only while there are any).

Services are owned by their NIMService, so the operator's watched state knows them. Claims are not owned
(they outlive it) and are found by their labels: in the watched state too once claims were listed in full
(``AppliedState.made_for``); where they could not be, one LIST when the spec's generation changes, and
again at most every :data:`RECHECK_S` while some are reported, so deleting them clears the condition
without a LIST on every reconcile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from kubernetes import client

from nim_operator import constants as c
from nim_operator import metrics
from nim_operator.kube import Kube, resource_path

log = logging.getLogger(__name__)

#: The condition type, on NIMServices and NIMCaches alike.
LEFT_BEHIND = "LeftBehind"
#: Seconds between LISTs while something is reported (so its deletion is noticed).
RECHECK_S = 60.0


@dataclass(frozen=True)
class Leftovers:
    """Old objects of one owner, by kind; empty tuples when there are none."""

    claims: tuple[str, ...] = ()
    services: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.claims or self.services)


def service_selector(name: str) -> str:
    """Labels of every child of NIMService ``name`` (``render.meta.child_labels``)."""
    return f"{c.LABEL_MANAGED_BY}={c.MANAGED_BY},{c.LABEL_NAME}={name},{c.LABEL_INSTANCE}={name}"


def service_claim_selector(name: str) -> str:
    """Claims created for NIMService ``name`` (a NIMCache of the same name labels its claim apart)."""
    return f"{service_selector(name)},!{c.LABEL_NIMCACHE}"


def cache_claim_selector(name: str) -> str:
    return f"{c.LABEL_NIMCACHE}={name}"


def _kubectl(kind: str, namespace: str, names: Sequence[str]) -> str:
    return f"kubectl delete {kind} -n {namespace} {' '.join(names)}"


def service_message(namespace: str, leftovers: Leftovers, *, claim: str | None, service: str) -> tuple[str, str]:
    """(reason, message) of a NIMService's LeftBehind condition: each old object and what to do with it."""
    parts = []
    if leftovers.claims:
        now = f"spec.storage.pvc names {claim}" if claim else "the storage is no longer a created claim"
        parts.append(
            f"PersistentVolumeClaim {', '.join(leftovers.claims)}, created for this NIMService, is no longer "
            f"mounted ({now}) and still holds its model files; the operator never deletes a claim that holds "
            f"weights. Delete it when no longer needed ({_kubectl('pvc', namespace, leftovers.claims)}), or "
            "name it in spec.storage.pvc.name again to use it."
        )
    if leftovers.services:
        parts.append(
            f"Service {', '.join(leftovers.services)} still routes to this NIMService's pods, but "
            f"spec.expose.service.name is now {service}: delete it once no client uses its name "
            f"({_kubectl('service', namespace, leftovers.services)}); otherwise it goes with the NIMService."
        )
    kinds = [k for k, found in (("Claim", leftovers.claims), ("Service", leftovers.services)) if found]
    return "Old" + "And".join(kinds), " ".join(parts)


def cache_message(namespace: str, claims: Sequence[str], *, claim: str | None) -> str:
    """The message of a NIMCache's LeftBehind condition (its reason is OldClaim)."""
    now = f" (spec.storage.pvc now names {claim})" if claim else ""
    return (
        f"PersistentVolumeClaim {', '.join(claims)}, created for this NIMCache, is no longer its claim{now} and "
        "still holds what was downloaded into it; the operator never deletes a claim that holds weights. Delete "
        f"it when no NIMService needs it ({_kubectl('pvc', namespace, claims)}), or name it in "
        "spec.storage.pvc.name again to use it."
    )


class LeftBehindFinder:
    """Lists an owner's labelled objects of one kind at a bounded rate and keeps the ones not in use."""

    def __init__(self, kube: Kube, *, recheck_s: float = RECHECK_S, clock: Callable[[], float] = time.monotonic):
        self.kube = kube
        self.recheck_s = recheck_s
        self.clock = clock
        self._seen: dict[tuple[str, str], tuple[int, tuple[str, ...], float]] = {}
        self._guard = threading.Lock()

    def find(
        self,
        *,
        owner_uid: str,
        generation: int,
        api_version: str,
        kind: str,
        namespace: str,
        selector: str,
        in_use: Collection[str],
        controlled: bool = False,
    ) -> tuple[str, ...]:
        """Names of the labelled objects not ``in_use`` (and controlled by the owner, if ``controlled``)."""
        key = (owner_uid, kind)
        now = self.clock()
        with self._guard:
            seen = self._seen.get(key)
        if seen is not None and seen[0] == generation and (not seen[1] or now - seen[2] < self.recheck_s):
            return seen[1]
        query = [("labelSelector", selector)]
        metrics.API_READS.labels(kind).inc()
        try:
            items = self.kube.request("GET", resource_path(api_version, kind, namespace), query=query)["items"]
        except client.ApiException as err:  # informational only: never fail a reconcile over it
            log.warning("listing %s in %s (%s) failed: %s", kind, namespace, selector, err.reason)
            return seen[1] if seen is not None else ()
        names = tuple(
            sorted(
                item["metadata"]["name"]
                for item in items
                if item["metadata"]["name"] not in in_use
                and not item["metadata"].get("deletionTimestamp")
                and (not controlled or _controlled_by(item, owner_uid))
            )
        )
        with self._guard:
            self._seen[key] = (generation, names, now)
        return names

    def forget(self, owner_uid: str) -> None:
        with self._guard:
            for key in [k for k in self._seen if k[0] == owner_uid]:
                del self._seen[key]


def _controlled_by(item: dict[str, object], uid: str) -> bool:
    meta = item.get("metadata")
    refs = meta.get("ownerReferences") if isinstance(meta, dict) else None
    return any(isinstance(r, dict) and r.get("uid") == uid and r.get("controller") for r in refs or [])
