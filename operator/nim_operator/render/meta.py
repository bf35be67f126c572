"""Metadata shared by every child: names, labels, owner reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nim_operator import constants as c


@dataclass(frozen=True)
class Owner:
    """The NIMService that owns the children."""

    name: str
    namespace: str
    uid: str


def selector_labels(owner: Owner) -> dict[str, str]:
    """The pod selector: stable for the life of the NIMService (Deployment selectors are immutable)."""
    return {c.LABEL_NAME: owner.name, c.LABEL_INSTANCE: owner.name}


def child_labels(owner: Owner, extra: dict[str, str]) -> dict[str, str]:
    # User labels first so they can never override the selector or the ownership marker.
    return {**extra, **selector_labels(owner), c.LABEL_MANAGED_BY: c.MANAGED_BY}


def child_metadata(
    owner: Owner, name: str, extra_labels: dict[str, str], annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": owner.namespace,
        "labels": child_labels(owner, extra_labels),
        "ownerReferences": [
            {
                "apiVersion": c.API_VERSION,
                "kind": c.KIND,
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta
