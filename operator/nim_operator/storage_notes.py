"""What a NIMService's status says about its storage beyond Ready: can replicas share the claim across
nodes, and did a rename leave a claim or Service behind. Both are conditions that inform, not failures.
"""

from __future__ import annotations

from nim_operator.api.spec import NIMServiceSpec
from nim_operator.cache_mount import CacheMount, sharing_note
from nim_operator.left_behind import (
    LEFT_BEHIND,
    LeftBehindFinder,
    Leftovers,
    service_claim_selector,
    service_message,
    service_selector,
)
from nim_operator.render.children import pvc_name, service_name
from nim_operator.render.meta import Owner
from nim_operator.status import Note


def replicas_at_most(spec: NIMServiceSpec) -> int:
    """The most replicas the spec may run: the autoscaler's bound when it owns the count."""
    if spec.autoscaling and spec.scale is not None and spec.scale.hpa is not None:
        return spec.scale.hpa.max_replicas
    return spec.desired_replicas


def _sharing(spec: NIMServiceSpec, owner: Owner, mount: CacheMount | None) -> Note | None:
    storage = spec.storage
    replicas = replicas_at_most(spec)
    if storage is not None and storage.nim_cache is not None and mount is not None:
        name = storage.nim_cache.name
        return sharing_note(
            replicas,
            mount.claim,
            mount.access_modes,
            what=f"NIMCache {name}'s claim",
            field=f"spec.storage.pvc.volumeAccessMode of NIMCache {name} (with a new spec.storage.pvc.name: a "
            "claim's access modes cannot change)",
        )
    if storage is not None and storage.pvc is not None and storage.pvc.create:
        mode = storage.pvc.volume_access_mode or "ReadWriteOnce"
        return sharing_note(
            replicas,
            pvc_name(owner, spec),
            [mode],
            what="Claim",
            field="spec.storage.pvc.volumeAccessMode (with a new spec.storage.pvc.name: a claim's access modes "
            "cannot change)",
        )
    return None  # no claim, or one the user made: its access modes are not ours to read


def left_behind(finder: LeftBehindFinder, owner: Owner, spec: NIMServiceSpec, generation: int) -> Leftovers:
    """Claims created for this NIMService that it no longer mounts, and Services it no longer names."""
    pvc = spec.storage.pvc if spec.storage else None
    in_use = {pvc_name(owner, spec)} if pvc is not None else set()
    # Claims are not owned (they outlive the NIMService): their labels say whose they are. The watched state
    # knows them by those labels once claims were listed in full, so a thousand services ask nothing.
    made = finder.kube.applied.made_for(owner.name, "v1", "PersistentVolumeClaim", owner.namespace)
    if made is not None:
        claims = tuple(name for name in made if name not in in_use)
    else:
        claims = finder.find(
            owner_uid=owner.uid,
            generation=generation,
            api_version="v1",
            kind="PersistentVolumeClaim",
            namespace=owner.namespace,
            selector=service_claim_selector(owner.name),
            in_use=in_use,
        )
    current = service_name(owner, spec)
    # Services are owned: the watched state knows them by owner.
    known = finder.kube.applied.owned(owner.uid, "v1", "Service", owner.namespace)
    if known is not None:
        services = tuple(name for name in known if name != current)
    else:
        services = finder.find(
            owner_uid=owner.uid,
            generation=generation,
            api_version="v1",
            kind="Service",
            namespace=owner.namespace,
            selector=service_selector(owner.name),
            in_use={current},
            controlled=True,
        )
    return Leftovers(claims=claims, services=services)


def storage_notes(
    finder: LeftBehindFinder, owner: Owner, spec: NIMServiceSpec, mount: CacheMount | None, generation: int
) -> list[Note]:
    notes = []
    sharing = _sharing(spec, owner, mount)
    if sharing is not None:
        notes.append(sharing)
    leftovers = left_behind(finder, owner, spec, generation)
    if leftovers:
        pvc = spec.storage.pvc if spec.storage else None
        claim = pvc_name(owner, spec) if pvc is not None else None
        reason, message = service_message(owner.namespace, leftovers, claim=claim, service=service_name(owner, spec))
        notes.append(Note(LEFT_BEHIND, True, reason, message))
    return notes
