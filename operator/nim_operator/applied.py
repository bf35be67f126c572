"""What the operator knows of the children it applied: the memory that makes an unchanged child cost no
request, and that notices when someone else changed or deleted one. Pure: fed by applies and watches.

Each child is known by (apiVersion, kind, namespace, name) with the hash of the desired body last applied
and the version the server gave back: ``metadata.generation`` where the kind has one (it moves only with
the spec, not with status), else ``metadata.resourceVersion``. A watch event with a *newer* version than
ours means someone else wrote the object: its hash is forgotten, so the next reconcile applies it again
(server-side apply then restores the fields we own, and writes nothing when they are intact). An older
version is a late event from before our own apply and is not news.

After a full listing of a kind (at start, and kept current by its watch), a child that is not known does
not exist: deciding that a feature's child must be deleted then costs no GET.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from nim_operator.constants import HASH_ANNOTATION, LABEL_INSTANCE, LABEL_NAME, LABEL_NIMCACHE

ChildKey = tuple[str, str, str, str]

#: Kinds whose objects are never re-applied for a change by someone else: a claim's spec is immutable once
#: bound, and its status changes (binding, resizing) would each look like drift.
NO_DRIFT_KINDS = frozenset({"PersistentVolumeClaim"})


def key_of(obj: Mapping[str, Any]) -> ChildKey:
    meta = obj.get("metadata") or {}
    return (str(obj.get("apiVersion")), str(obj.get("kind")), str(meta.get("namespace") or ""), str(meta.get("name")))


def version_of(obj: Mapping[str, Any]) -> int:
    """The object's generation, or its resourceVersion when the kind has none (0 when neither is a number)."""
    meta = obj.get("metadata") or {}
    value = meta.get("generation") or meta.get("resourceVersion") or 0
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((str(r.get("uid")) for r in refs if r.get("controller")), None)


def made_for(obj: Mapping[str, Any]) -> str | None:
    """The NIMService a child was made for, by its labels (``render.meta.child_labels``): what finds the
    children no owner reference ties to it, its claims. A NIMCache's claim is its cache's, not a service's."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    instance = labels.get(LABEL_INSTANCE)
    if not instance or labels.get(LABEL_NAME) != instance or LABEL_NIMCACHE in labels:
        return None
    if meta.get("deletionTimestamp"):
        return None  # going: no longer anyone's to report
    return str(instance)


_K = TypeVar("_K")


def _discard(index: dict[_K, set[ChildKey]], at: _K, key: ChildKey) -> None:
    keys = index.get(at)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[at]


@dataclass(frozen=True)
class Entry:
    digest: str  # hash of the desired body last applied; "" when unknown (someone else wrote it last)
    version: int
    owner: str | None
    exists: bool = True
    service: str | None = None  # made_for(): the NIMService's name (in the child's namespace)


class AppliedState:
    """Thread-safe; see the module docstring."""

    def __init__(self) -> None:
        self._entries: dict[ChildKey, Entry] = {}
        self._listed: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        # Indexes of the entries by owner uid and by (apiVersion, kind, namespace, service): each reconcile
        # asks both, and a scan of every child of a thousand services on each would be most of its CPU.
        self._by_owner: dict[str, set[ChildKey]] = {}
        self._by_service: dict[tuple[str, str, str, str], set[ChildKey]] = {}

    def _put(self, key: ChildKey, entry: Entry) -> None:
        """Set an entry, indexes included (lock held)."""
        self._pop(key)
        self._entries[key] = entry
        if entry.owner is not None:
            self._by_owner.setdefault(entry.owner, set()).add(key)
        if entry.service is not None:
            self._by_service.setdefault((key[0], key[1], key[2], entry.service), set()).add(key)

    def _pop(self, key: ChildKey) -> Entry | None:
        """Drop an entry, indexes included (lock held); the entry it was."""
        entry = self._entries.pop(key, None)
        if entry is not None and entry.owner is not None:
            _discard(self._by_owner, entry.owner, key)
        if entry is not None and entry.service is not None:
            _discard(self._by_service, (key[0], key[1], key[2], entry.service), key)
        return entry

    def record(self, key: ChildKey, digest: str, live: Mapping[str, Any]) -> None:
        """Our apply of ``digest`` returned ``live``."""
        with self._lock:
            self._put(key, Entry(digest, version_of(live), controller_uid(live), service=made_for(live)))

    def needs_apply(self, key: ChildKey, digest: str) -> bool:
        with self._lock:
            entry = self._entries.get(key)
        return entry is None or not entry.exists or entry.digest != digest

    def edited_by_others(self, key: ChildKey) -> bool:
        """Whether someone else wrote the child after our last apply (its hash is unknown)."""
        with self._lock:
            entry = self._entries.get(key)
        return entry is not None and entry.exists and entry.digest == ""

    def exists(self, key: ChildKey) -> bool | None:
        """True or False when known (applied, seen, or absent from a full listing); None when a GET must tell."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                return entry.exists
            return False if key[:2] in self._listed else None

    def observe(self, obj: Mapping[str, Any]) -> bool:
        """Learn a child from a watch event or a listing; True when it is news its owner must reconcile."""
        key = key_of(obj)
        version = version_of(obj)
        digest = ((obj.get("metadata") or {}).get("annotations") or {}).get(HASH_ANNOTATION) or ""
        with self._lock:
            known = self._entries.get(key)
            if known is None or not known.exists:
                # First sight (after a restart the hash annotation says what was applied), or it appeared.
                self._put(key, Entry(digest, version, controller_uid(obj), service=made_for(obj)))
                return known is not None or not digest
            if version <= known.version:
                return False
            if key[1] in NO_DRIFT_KINDS:
                self._put(key, replace(known, version=version, service=made_for(obj)))
                return False
            self._put(key, Entry("", version, known.owner, service=made_for(obj)))
            return True

    def gone(self, key: ChildKey) -> None:
        """The child was deleted (a watch event, or our own delete)."""
        with self._lock:
            known = self._pop(key)
            if known is not None and key[:2] not in self._listed:
                self._put(key, Entry("", 0, known.owner, exists=False))

    def mark_absent(self, key: ChildKey, owner: str | None) -> None:
        """A GET found nothing: remember it, so the next reconcile does not ask again."""
        with self._lock:
            if key[:2] in self._listed:
                self._pop(key)
            else:
                self._put(key, Entry("", 0, owner, exists=False))

    def forget(self, key: ChildKey) -> None:
        """Know nothing of this child any more (the next reconcile applies, or asks, again)."""
        with self._lock:
            self._pop(key)

    def listed(self, api_version: str, kind: str, items: Iterable[Mapping[str, Any]]) -> int:
        """A full listing of our children of a kind: learn each, and from now on absence means absent."""
        count = 0
        for item in items:
            self.observe({"apiVersion": api_version, "kind": kind, **item})
            count += 1
        with self._lock:
            self._listed.add((api_version, kind))
        return count

    def owned(self, owner_uid: str, api_version: str, kind: str, namespace: str) -> list[str] | None:
        """Names of the existing children of this kind that ``owner_uid`` controls; None when the kind was
        never listed in full (then only a LIST can tell)."""
        with self._lock:
            if (api_version, kind) not in self._listed:
                return None
            keys = self._by_owner.get(owner_uid, ())
            return sorted(k[3] for k in keys if k[:3] == (api_version, kind, namespace) and self._entries[k].exists)

    def made_for(self, service: str, api_version: str, kind: str, namespace: str) -> list[str] | None:
        """Names of the existing children of this kind made for NIMService ``service`` (by their labels,
        owned or not); None when the kind was never listed in full (then only a LIST can tell)."""
        with self._lock:
            if (api_version, kind) not in self._listed:
                return None
            keys = self._by_service.get((api_version, kind, namespace, service), ())
            return sorted(k[3] for k in keys if self._entries[k].exists)

    def prune_owner(self, owner_uid: str) -> None:
        """Drop every entry of a deleted owner (its children go with it: garbage collection)."""
        with self._lock:
            for key in list(self._by_owner.get(owner_uid, ())):
                self._pop(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
