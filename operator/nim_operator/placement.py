"""From cluster facts and a NIMService spec to where and how its pods run. Pure: no API calls.

Facts are the nodes now (GFD labels, allocatable and free GPUs) and what autoscalers may add
(:mod:`nim_operator.capacity`); the decision says which, and rendering turns it into node affinity that
both the scheduler and the provisioner understand.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from nim_operator import constants as c
from nim_operator.api.spec import NIMServiceSpec, ProfileStatus, Rejected
from nim_runtime.profiles import (
    ImageManifest,
    ModelManifest,
    NodeGpuFacts,
    Profile,
    ProfileDecision,
    ProfileSelector,
    ProfileSet,
    ScaleUpOption,
    find_manifest,
    pool_order,
    select_profile,
)

#: The last path segment of our runtime's image repository (ghcr.io/nim-operator/nim-runtime, a mirror's
#: copy, the test cluster's localhost/nim-runtime): images so named run our runtime and take its ids.
RUNTIME_IMAGE_NAME = "nim-runtime"


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
    major, minor = _int(labels.get(c.GPU_COMPUTE_MAJOR_LABEL)), _int(labels.get(c.GPU_COMPUTE_MINOR_LABEL))
    product = labels.get(c.GPU_PRODUCT_LABEL)
    return NodeGpuFacts(
        name=node["metadata"]["name"],
        product=product,
        gpus=gpus,
        memory_mib=_int(labels.get(c.GPU_MEMORY_LABEL)),
        family=labels.get(c.GPU_FAMILY_LABEL),
        compute=(major, minor or 0) if major is not None else None,
        replicas=max(_int(labels.get(c.GPU_REPLICAS_LABEL)) or 1, 1),
        mig=labels.get(c.MIG_STRATEGY_LABEL) == "single" or "-MIG-" in (product or ""),
    )


def runs_our_runtime(repository: str, runtime_repository: str | None = None) -> bool:
    """Whether an image is known without asking it to run our runtime: named ``nim-runtime``, or the
    repository the operator was configured with for its runtime. Any other image is asked for its
    manifest (see :mod:`nim_operator.discovery`), which also finds our runtime under another name."""
    name = repository.split("@", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return name == RUNTIME_IMAGE_NAME or (bool(runtime_repository) and repository == runtime_repository)


def manifest_for(spec: NIMServiceSpec) -> ModelManifest | None:
    """The catalog manifest of the model the spec names, for an image that runs our runtime; else None.

    Only our runtime accepts our catalog's profile ids: callers ask this for such images alone.
    """
    if spec.model and spec.model.name:
        return find_manifest(spec.model.name)
    return None


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


def pod_tolerations(spec: NIMServiceSpec) -> list[dict[str, Any]]:
    """The tolerations a GPU pod of this spec gets: the user's, and the GPU taint's unless they name it."""
    tolerations = [dict(t) for t in spec.tolerations]
    if not any(t.get("key") == c.GPU_TAINT_KEY for t in tolerations):
        tolerations.append(dict(c.GPU_TOLERATION))
    return tolerations


def context_cap(spec: NIMServiceSpec) -> int | None:
    """The user's NIM_MAX_MODEL_LEN (a plain value in spec.env), which caps the KV cache to size."""
    for entry in spec.env:
        if entry.get("name") == c.ENV_MAX_MODEL_LEN:
            return _int(entry.get("value"))
    return None


@dataclass(frozen=True)
class Placement:
    """What rendering needs to know about the decision."""

    profile: Profile | None
    gpu_products: tuple[str, ...] = ()
    served_model_name: str | None = None
    #: Node-selector terms (each a tuple of (key, operator, values)) the provisioner understands, one per
    #: pool shape that can run the profile; ORed with the GFD product term.
    pool_terms: tuple[tuple[tuple[str, str, tuple[str, ...]], ...], ...] = ()

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
    manifest: ProfileSet,
    nodes: list[NodeGpuFacts],
    *,
    previous: str | None,
    capacity: Sequence[ScaleUpOption] = (),
    previous_pools: Sequence[str] | None = None,
) -> ProfileDecision:
    """Select a profile for this spec, now or after a scale-up. Raises ``ProfileError`` when none fits."""
    pinned, pinned_by = spec.pinned_profile
    return select_profile(
        manifest,
        nodes,
        selector=selector_of(spec),
        pinned=pinned,
        pinned_by=pinned_by,
        previous=previous,
        capacity=capacity,
        context_cap=context_cap(spec),
        previous_pools=previous_pools,
    )


def kept_pools(before: ProfileStatus | None) -> list[str] | None:
    """The pools a sticky decision keeps steering to: those it had while its pods could run (Now, or
    waiting for GPUs other pods hold), so a NodePool added later does not roll running pods. A decision
    still waiting for a scale-up takes every pool that fits: its pods are Pending anyway."""
    if before is None or before.placement not in ("Now", "WhenGPUsFree"):
        return None
    return list(before.node_pools)


def pool_terms(decision: ProfileDecision) -> tuple[tuple[tuple[str, str, tuple[str, ...]], ...], ...]:
    """One affinity term per distinct pool shape that can run the decision, smallest node first.

    Karpenter provisions for the first term and falls back to the next only when it cannot: the smallest
    shape that fits (fewest GPUs, then least memory per GPU) is the cheapest way to add a replica.
    """
    ordered = sorted(
        (o for o in decision.pools if o.requirements),
        key=lambda o: (o.gpus, o.memory_mib or 0, o.requirements),
    )
    return tuple(dict.fromkeys(o.requirements for o in ordered))


def placement_of(spec: NIMServiceSpec, manifest: ProfileSet | None, decision: ProfileDecision | None) -> Placement:
    """What rendering needs. A served name is set from our own manifests only: an image with its own
    manifest (NIM's) serves the name it knows unless the spec names one."""
    served = (spec.model.name if spec.model and spec.model.name else None) or (
        manifest.model_name if isinstance(manifest, ModelManifest) else None
    )
    if decision is None:
        return Placement(profile=None, served_model_name=served)
    return Placement(decision.profile, decision.gpu_products, served, pool_terms(decision))


#: Status words for where a decision runs.
PLACEMENT: dict[str, Literal["Now", "AfterScaleUp", "WhenGPUsFree", "Waiting"]] = {
    "now": "Now",
    "scale-up": "AfterScaleUp",
    "busy": "WhenGPUsFree",
    "waiting": "Waiting",
}


def profile_status(
    decision: ProfileDecision | None, *, unmanaged_reason: str = "", manifest: ProfileSet | None = None
) -> ProfileStatus:
    """The decision for status; profiles of an image's manifest that selection could not consider (an
    unknown precision) are listed among the rejected with that reason."""
    if decision is None:
        return ProfileStatus(reason=unmanaged_reason)
    unusable = manifest.skipped if isinstance(manifest, ImageManifest) else ()
    skipped = [Rejected(id=s.id, why=f"not considered: {s.why}") for s in unusable]
    return ProfileStatus(
        id=decision.profile.id,
        name=decision.profile.name,
        tags=decision.profile.tags,
        gpu_products=list(decision.gpu_products),
        gpu_count=decision.profile.gpus,
        reason=decision.reason,
        placement=PLACEMENT[decision.availability],
        node_pools=pool_order(decision.pools),
        rejected=[Rejected(id=r.id, why=r.why) for r in decision.rejected] + skipped,
    )
