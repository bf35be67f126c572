"""How a NIMService mounts the NIMCache it names, or why it must wait or cannot. Pure.

A NIMService whose cache is not Ready changes nothing: pods that already run keep their volume, and new
pods are not started on a half-filled claim (a runtime would load partial weights and crash-loop). The
wait is reported, not failed: the cache filling, or being created later, ends it without a spec edit.

``storage.nimCache.profile`` is the profile the service serves (NVIDIA's NIMService sets
NIM_MODEL_PROFILE from it); a cache that lists the profiles it holds must hold that one, or the service
fails with a reason naming the field and the profiles there are. Replicas share the claim read-only; a
ReadWriteOnce claim attaches to one node, which :func:`sharing_note` says when replicas > 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nim_operator import constants as c
from nim_operator.status import Failure, Note

#: The NIMService condition about sharing its claim across nodes (present only with replicas > 1).
SHARED_STORAGE = "StorageSharedAcrossNodes"
#: Access modes that let pods on different nodes mount one claim.
_MANY_NODES = frozenset({"ReadWriteMany", "ReadOnlyMany"})


@dataclass(frozen=True)
class CacheMount:
    """The Ready cache's claim as the pods mount it (read-only: many pods share the weights)."""

    claim: str
    sub_path: str | None
    #: NIM_MODEL_PATH for caches that hold one model folder at their root (hub sources); None when the
    #: runtime finds the model under NIM_CACHE_PATH itself (catalog and NGC caches).
    model_path: str | None
    #: The claim's access modes; ReadWriteOnce keeps every replica on one node.
    access_modes: tuple[str, ...] = ()
    #: Names of the profiles the cache holds; empty when it does not say (the puller chose).
    profiles: tuple[str, ...] = ()


def mount_facts(cache: Mapping[str, Any] | None) -> object:
    """What a NIMService mounting this cache reads of it (see :func:`cache_mount`): its progress aside, so a
    download's progress does not re-run every service that waits for it."""
    if cache is None:
        return None
    status = {k: v for k, v in (cache.get("status") or {}).items() if k not in ("progress", "kopf")}
    return cache.get("spec"), status


def cache_mount(namespace: str, name: str, cache: Mapping[str, Any] | None) -> tuple[CacheMount | None, Failure | None]:
    """The mount of NIMCache ``name``, or the reason to wait for it."""
    where = f"NIMCache {namespace}/{name}"
    if cache is None:
        return None, Failure(
            "NIMCacheNotFound", f"{where} does not exist: create it, or change spec.storage.nimCache.name"
        )
    status = cache.get("status") or {}
    spec = cache.get("spec") or {}
    state = status.get("state") or "Pending"
    ready: dict[str, Any] = next((x for x in status.get("conditions") or [] if x.get("type") == "Ready"), {})
    said = ": ".join(str(x) for x in (ready.get("reason"), ready.get("message")) if x)
    if state == "Failed":
        return None, Failure("NIMCacheFailed", f"{where} failed ({said}); the service starts once it is Ready")
    if state != "Ready" or not status.get("pvc"):
        return None, Failure("WaitingForNIMCache", f"{where} is {state}" + (f" ({said})" if said else ""))
    source = spec.get("source") or {}
    pvc = (spec.get("storage") or {}).get("pvc") or {}
    hub = "hf" in source or "dataStore" in source
    modes = tuple(str(m) for m in status.get("accessModes") or ()) or (
        (str(pvc["volumeAccessMode"]),) if pvc.get("volumeAccessMode") else ()
    )
    return (
        CacheMount(
            claim=str(status["pvc"]),
            sub_path=pvc.get("subPath") or None,
            model_path=c.MODEL_STORE if hub else None,
            access_modes=modes,
            profiles=tuple(str(p.get("name")) for p in status.get("profiles") or () if p.get("name")),
        ),
        None,
    )


def profile_not_held(namespace: str, name: str, mount: CacheMount, profile: str | None, field: str) -> Failure | None:
    """Why the cache cannot serve ``profile`` (named in ``field``), or None when it can or does not say."""
    if not profile or not mount.profiles or profile in mount.profiles:
        return None
    return Failure(
        "NIMCacheProfileMissing",
        f"{field}: profile {profile!r} is not in NIMCache {namespace}/{name}, which holds "
        f"{', '.join(mount.profiles)}: name one of those, or cache {profile!r} too (for an NGC source, add it "
        "to spec.source.ngc.model.profiles of the NIMCache)",
    )


def sharing_note(
    replicas: int, claim: str | None, access_modes: Sequence[str], *, what: str, field: str
) -> Note | None:
    """Whether ``replicas`` pods can spread over nodes on this claim; None when it does not matter.

    ``what`` names the claim's origin for the message (``NIMCache x's claim``), ``field`` where its access
    mode is set.
    """
    if replicas <= 1 or claim is None or not access_modes:
        return None
    if _MANY_NODES.intersection(access_modes):
        mode = next(m for m in access_modes if m in _MANY_NODES)
        return Note(
            SHARED_STORAGE, True, mode, f"{what} {claim} is {mode}: the {replicas} replicas may run on any nodes"
        )
    mode = access_modes[0]
    if mode == "ReadWriteOncePod":
        return Note(
            SHARED_STORAGE,
            False,
            mode,
            f"{what} {claim} is {mode}: one pod at a time may mount it, so only one of the {replicas} replicas "
            f"can run. Set {field} to ReadWriteMany (or ReadWriteOnce, for replicas on one node).",
        )
    return Note(
        SHARED_STORAGE,
        False,
        mode,
        f"{what} {claim} is {mode}: its volume attaches to one node at a time, so the {replicas} replicas can "
        "only run on that node (replicas placed elsewhere wait on the volume: a Multi-Attach error, or a "
        "volume node affinity conflict). To spread replicas across nodes, use a storage class that offers "
        f"ReadWriteMany and set {field} to ReadWriteMany.",
    )
