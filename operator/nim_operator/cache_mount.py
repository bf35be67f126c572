"""How a NIMService mounts the NIMCache it names, or why it must wait. Pure.

A NIMService whose cache is not Ready changes nothing: pods that already run keep their volume, and new
pods are not started on a half-filled claim (a runtime would load partial weights and crash-loop). The
wait is reported, not failed: the cache filling, or being created later, ends it without a spec edit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nim_operator import constants as c
from nim_operator.status import Failure


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
    modes = (str(pvc["volumeAccessMode"]),) if pvc.get("volumeAccessMode") else ()
    return (
        CacheMount(
            claim=str(status["pvc"]),
            sub_path=pvc.get("subPath") or None,
            model_path=c.MODEL_STORE if hub else None,
            access_modes=modes,
        ),
        None,
    )
