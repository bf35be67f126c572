"""What runs a NIMService's pods and what they claim: a Deployment or a LeaderWorkerSet group, and the
DRA claims of ``spec.draResources`` or of the chosen profile. The reconciler's one step between the
profile decision and rendering.

:func:`plan_workload` is pure. :func:`verify_claims` and :func:`prune_templates` read and delete through
:class:`~nim_operator.kube.Kube`: a claim whose template, claim or DeviceClass does not exist fails the
NIMService before anything is applied, and a template no longer rendered (its spec is immutable, so a
changed spec means a new one) is removed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nim_operator import constants as c
from nim_operator.api.spec import NIMServiceSpec, ProfileStatus
from nim_operator.dra_inventory import (
    DraGpu,
    allocated_alternatives,
    describe_allocation,
    dra_node_facts,
    profile_claim,
)
from nim_operator.group_layout import GroupError, GroupLayout, claimed_layout, layout, pooled_facts
from nim_operator.kube import Kube, resource_path
from nim_operator.placement import Placement, selector_of
from nim_operator.render.dra import (
    API_VERSION as RESOURCE_API,
)
from nim_operator.render.dra import (
    CLAIM_KIND,
    DEVICE_CLASS_KIND,
    TEMPLATE_KIND,
    ClaimPlan,
    DraSpecError,
    user_claims,
)
from nim_operator.render.meta import Owner
from nim_operator.status import Failure
from nim_runtime.profiles import NodeGpuFacts, ProfileDecision, ProfileSet

#: Reasons of the Failed condition for claims the cluster cannot serve.
CLAIM_MISSING_REASON = "ResourceClaimNotFound"
DEVICE_CLASS_MISSING_REASON = "DeviceClassNotFound"


class WorkloadError(Exception):
    """The spec's group or claims cannot be planned or served; carries the Failure to report."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


@dataclass(frozen=True)
class Workload:
    """The group layout (None: a Deployment) and the pods' DRA claims."""

    group: GroupLayout | None = None
    claims: ClaimPlan = dataclasses.field(default_factory=ClaimPlan)


def selection_nodes(
    nodes: Sequence[NodeGpuFacts], dra_only: Mapping[str, Sequence[DraGpu]], *, cordoned: Collection[str] = ()
) -> list[NodeGpuFacts]:
    """The nodes selection ranks profiles on: GPU labels, except that DRA-only nodes are described by their
    ResourceSlices (what DRA can allocate there), which also covers nodes without GPU Feature Discovery.
    Cordoned nodes stay out, whatever their slices offer."""
    from_slices = {f.name: f for f in dra_node_facts(dra_only) if f.name not in cordoned}
    merged = [from_slices.get(n.name, n) for n in nodes]
    known = {n.name for n in nodes}
    return merged + [f for name, f in from_slices.items() if name not in known]


def selection_view(spec: NIMServiceSpec, nodes: list[NodeGpuFacts]) -> list[NodeGpuFacts]:
    """A multi-node group spans nodes: selection sees each GPU product's nodes as one pool."""
    return pooled_facts(nodes) if spec.multi_node is not None else nodes


def _user_gpus(spec: NIMServiceSpec) -> int | None:
    r = spec.resources
    for section in (r.limits, r.requests) if r else ():
        if section and c.GPU_RESOURCE in section:
            try:
                return int(str(section[c.GPU_RESOURCE]))
            except ValueError:
                return None
    return None


def plan_workload(
    owner: Owner,
    spec: NIMServiceSpec,
    manifest: ProfileSet | None,
    decision: ProfileDecision | None,
    placement: Placement,
    nodes: Sequence[NodeGpuFacts],
    dra_only: Mapping[str, Sequence[DraGpu]],
) -> tuple[Workload, Placement, str]:
    """The workload, the placement rendering uses, and what to add to the profile's explanation.

    Raises :class:`WorkloadError` when the group does not fit or a DRA selector cannot be expressed.
    """
    try:
        claims = user_claims(owner, spec)
    except DraSpecError as err:
        raise WorkloadError(Failure("InvalidSpec", str(err))) from err
    notes: list[str] = []
    group = None
    if spec.multi_node is not None and claims.claims:
        group = claimed_layout(spec.multi_node)
        notes.append(
            f"served by a LeaderWorkerSet in {group.describe()}, each pod with the claims of spec.draResources"
        )
    elif spec.multi_node is not None:
        try:
            group = layout(
                spec.multi_node,
                placement.profile,
                nodes,
                products=placement.gpu_products,
                user_gpus=_user_gpus(spec),
                waiting_for_nodes=decision is not None and not decision.nodes,
            )
        except GroupError as err:
            raise WorkloadError(Failure(err.reason, str(err))) from err
        notes.append(f"served by a LeaderWorkerSet in {group.describe()}")
    elif not claims.claims and manifest is not None and decision is not None and _user_gpus(spec) is None:
        own = profile_claim(owner, spec, manifest, decision, dra_only, selector_of(spec))
        if own is not None:
            claims = own
            notes.append(own.explanation)
            # The devices pick the profile among the alternatives: the runtime reads them, not an env var.
            profile = None if own.has_alternatives else placement.profile
            placement = dataclasses.replace(placement, gpu_products=(), profile=profile)
    return Workload(group, claims), placement, "; ".join(notes)


def explain(profile: ProfileStatus, note: str) -> ProfileStatus:
    return profile.model_copy(update={"reason": f"{profile.reason}; {note}"}) if note else profile


def _classes_of(claim_spec: Mapping[str, Any]) -> list[str]:
    out = []
    for request in ((claim_spec.get("devices") or {}).get("requests")) or []:
        if "exactly" in request:
            out.append(request["exactly"].get("deviceClassName"))
        out += [sub.get("deviceClassName") for sub in request.get("firstAvailable") or []]
    return [name for name in out if name]


def verify_claims(kube: Kube, namespace: str, claims: ClaimPlan) -> None:
    """Every claim the pods name exists and every DeviceClass it asks for is served; else WorkloadError."""
    needed = list(claims.device_classes)
    for claim in claims.claims:
        if claim.field.endswith(("resourceClaimName", "resourceClaimTemplateName")):
            kind, name = (CLAIM_KIND, claim.claim) if claim.claim else (TEMPLATE_KIND, claim.template)
            assert name is not None
            live = kube.get(RESOURCE_API, kind, namespace, name)
            if live is None:
                raise WorkloadError(
                    Failure(
                        CLAIM_MISSING_REASON,
                        f"{claim.field}: {kind} {namespace}/{name} does not exist: create it, or describe the devices "
                        "in claimCreationSpec and the operator makes the template",
                    )
                )
            spec = live.get("spec") or {}
            claim_spec = spec.get("spec", {}) if kind == TEMPLATE_KIND else spec
            needed += [(f"{claim.field} ({kind} {name})", cls) for cls in _classes_of(claim_spec)]
    for where, device_class in dict.fromkeys(needed):
        if kube.get(RESOURCE_API, DEVICE_CLASS_KIND, None, device_class) is None:
            raise WorkloadError(
                Failure(
                    DEVICE_CLASS_MISSING_REASON,
                    f"{where}: DeviceClass {device_class} does not exist, so no device can be allocated: install the "
                    "DRA driver that provides it or name an existing DeviceClass (NVIDIA's GPU driver serves "
                    "gpu.nvidia.com)",
                )
            )


def prune_templates(kube: Kube, owner: Owner, keep: Sequence[str]) -> list[str]:
    """Delete this NIMService's ResourceClaimTemplates that are not rendered any more; their names."""
    selector = f"{c.LABEL_INSTANCE}={owner.name},{c.LABEL_MANAGED_BY}={c.MANAGED_BY}"
    return kube.delete_owned_except(RESOURCE_API, TEMPLATE_KIND, owner.namespace, owner.uid, selector, set(keep))


def allocation_note(kube: Kube, namespace: str, claims: ClaimPlan, pods: Sequence[str]) -> str:
    """Which alternative of the profile's claim the scheduler gave each pod (one LIST of the namespace's
    claims, only for a claim with fallbacks and while it has pods): status then says what runs."""
    if not claims.has_alternatives or not pods:
        return ""
    listed = kube.request("GET", resource_path(RESOURCE_API, CLAIM_KIND, namespace))
    return describe_allocation(allocated_alternatives(listed.get("items") or [], pods))
