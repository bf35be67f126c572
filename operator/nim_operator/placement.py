"""From cluster facts and a NIMService spec to where and how its pods run. Pure: no API calls."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nim_operator import constants as c
from nim_operator.api.spec import NIMServiceSpec, ProfileStatus, Rejected
from nim_runtime.profiles import (
    ModelManifest,
    NodeGpuFacts,
    Profile,
    ProfileDecision,
    ProfileSelector,
    find_manifest,
    find_manifest_for_image,
    select_profile,
)


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def node_schedulable(node: Mapping[str, Any]) -> bool:
    """Whether the node takes new pods. A cordoned node still holds its GPUs: a decision made for its
    product is kept (maintenance is not removal), but no new decision counts on it."""
    return not (node.get("spec") or {}).get("unschedulable")


def node_facts(node: Mapping[str, Any]) -> NodeGpuFacts:
    """GPU facts of a Node object, cordoned or not (see :func:`node_schedulable`).

    Allocatable ``nvidia.com/gpu`` is what the scheduler counts, so it wins over the GFD count label.
    """
    labels = node.get("metadata", {}).get("labels") or {}
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    gpus = _int(allocatable.get(c.GPU_RESOURCE))
    if gpus is None:
        gpus = _int(labels.get(c.GPU_COUNT_LABEL)) or 0
    return NodeGpuFacts(
        name=node["metadata"]["name"],
        product=labels.get(c.GPU_PRODUCT_LABEL),
        gpus=gpus,
        memory_mib=_int(labels.get(c.GPU_MEMORY_LABEL)),
        family=labels.get(c.GPU_FAMILY_LABEL),
    )


def manifest_for(spec: NIMServiceSpec) -> ModelManifest | None:
    """The catalog manifest for the model named in the spec, else for the image, else None."""
    if spec.model and spec.model.name:
        found = find_manifest(spec.model.name)
        if found is not None:
            return found
    return find_manifest_for_image(spec.image.repository)


def selector_of(spec: NIMServiceSpec) -> ProfileSelector:
    sel = spec.profile_selector
    if sel is None:
        return ProfileSelector()
    return ProfileSelector(
        engine=sel.engine,
        precision=sel.precision,
        tensor_parallelism=sel.tensor_parallelism,
        qos_profile=sel.qos_profile,
        lora=sel.lora,
        gpu_products=tuple(g.product for g in sel.gpus),
    )


@dataclass(frozen=True)
class Placement:
    """What rendering needs to know about the decision."""

    profile: Profile | None
    gpu_products: tuple[str, ...] = ()
    served_model_name: str | None = None

    @property
    def gpus(self) -> int:
        return self.profile.gpus if self.profile else 0


#: The spec fields a profile decision is made from (and storage.nimCache.profile). While they keep their
#: values, the decision sticks.
PLACEMENT_FIELDS = frozenset(
    {
        "image",
        "model",
        "model_manifest",
        "profile",
        "profile_selector",
        "node_selector",
        "tolerations",
        "affinity",
        "multi_node",
        "dra_resources",
    }
)


def placement_inputs(spec: NIMServiceSpec) -> str:
    """A short hash of what a decision is made from (the image's tag aside: a new version of the same image
    keeps its profile while the profile stays runnable)."""
    fields = spec.model_dump(mode="json", include=set(PLACEMENT_FIELDS), exclude_none=True)
    if isinstance(fields.get("image"), dict):
        fields["image"] = {"repository": fields["image"].get("repository")}
    cache = spec.storage.nim_cache if spec.storage else None
    if cache is not None:
        fields["nimCacheProfile"] = cache.profile
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def decide(
    spec: NIMServiceSpec,
    manifest: ModelManifest,
    nodes: list[NodeGpuFacts],
    *,
    previous: str | None,
) -> ProfileDecision:
    """Select a profile for this spec. Raises ``ProfileError`` when none fits."""
    pinned, pinned_by = spec.pinned_profile
    return select_profile(
        manifest, nodes, selector=selector_of(spec), pinned=pinned, previous=previous, pinned_by=pinned_by
    )


def placement_of(spec: NIMServiceSpec, manifest: ModelManifest | None, decision: ProfileDecision | None) -> Placement:
    served = (spec.model.name if spec.model and spec.model.name else None) or (
        manifest.model_name if manifest else None
    )
    if decision is None:
        return Placement(profile=None, served_model_name=served)
    return Placement(decision.profile, decision.gpu_products, served)


def profile_status(decision: ProfileDecision | None, *, unmanaged_reason: str = "") -> ProfileStatus:
    if decision is None:
        return ProfileStatus(reason=unmanaged_reason)
    return ProfileStatus(
        id=decision.profile.id,
        tags=decision.profile.tags,
        gpu_products=list(decision.gpu_products),
        gpu_count=decision.profile.gpus,
        reason=decision.reason,
        rejected=[Rejected(id=r.id, why=r.why) for r in decision.rejected],
    )
