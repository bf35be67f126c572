"""The GPUs a cluster offers through DRA, and the claim a chosen profile becomes where DRA is the only way.

NVIDIA's DRA driver publishes one ResourceSlice per node (driver ``gpu.nvidia.com``) whose devices carry
``productName`` (NVML's name, e.g. ``NVIDIA H100 80GB HBM3``; GPU Feature Discovery's label is the same
with dashes) and a ``memory`` capacity. A node whose GPUs are offered this way and not through the device
plugin (no allocatable ``nvidia.com/gpu``) can only run pods that claim them. When every node able to run
the chosen profile is such a node and the spec names no claim and no GPUs, the operator writes the claim
itself: a request whose ``firstAvailable`` alternatives are the profiles feasible on those nodes, best first
(CEL selectors on product and memory), so the scheduler falls back where the best cannot be had; with more
than one alternative the runtime runs the profile of the GPUs it was given (selection ranks them the same).

NVIDIA's operator leaves such selectors to its users. Parsing is pure; the inventory is the watch's memory.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from nim_operator import constants as c
from nim_operator.api.dra import NVIDIA_GPU_DRIVER
from nim_operator.api.spec import NIMServiceSpec
from nim_operator.render.dra import MAX_ALTERNATIVES, ClaimPlan, PodClaim, template_body
from nim_operator.render.meta import Owner
from nim_runtime.profiles import (
    NodeGpuFacts,
    Profile,
    ProfileDecision,
    ProfileError,
    ProfileSelector,
    ProfileSet,
    select_profile,
)

#: The pod claim and request name of a profile's own claim.
PROFILE_CLAIM = "gpus"
#: Put by the resource claim controller on a claim it made from a pod's template: the pod's claim entry.
POD_CLAIM_ANNOTATION = "resource.kubernetes.io/pod-claim-name"
MIB = 1024 * 1024


@dataclass(frozen=True)
class DraGpu:
    """One GPU device of a ResourceSlice."""

    product: str
    memory_mib: int | None = None


def gfd_product(product: str) -> str:
    """GPU Feature Discovery's form of an NVML product name: spaces become dashes."""
    return product.strip().replace(" ", "-")


def slice_gpus(body: Mapping[str, Any]) -> tuple[str | None, tuple[DraGpu, ...]]:
    """The node and GPUs of one ResourceSlice of NVIDIA's driver; no GPUs for any other slice."""
    spec = body.get("spec") or {}
    if spec.get("driver") != NVIDIA_GPU_DRIVER:
        return None, ()
    gpus = []
    for device in spec.get("devices") or []:
        attributes = device.get("attributes") or {}
        kind = (attributes.get("type") or {}).get("string", "gpu")
        product = (attributes.get("productName") or {}).get("string")
        if kind != "gpu" or not product:
            continue
        memory = ((device.get("capacity") or {}).get("memory") or {}).get("value")
        mib = int(parse_quantity(memory) / MIB) if memory is not None else None
        gpus.append(DraGpu(product, mib))
    return spec.get("nodeName"), tuple(gpus)


class DraInventory:
    """ResourceSlices of NVIDIA's driver and which nodes also have the device plugin, as watched."""

    def __init__(self) -> None:
        self._slices: dict[str, tuple[str, tuple[DraGpu, ...]]] = {}
        self._plugin: set[str] = set()
        self._lock = threading.Lock()

    def slice_seen(self, body: Mapping[str, Any]) -> bool:
        """Remember a slice; whether what it offers changed."""
        node, gpus = slice_gpus(body)
        name = body["metadata"]["name"]
        with self._lock:
            before = self._slices.get(name)
            if node is None or not gpus:
                self._slices.pop(name, None)
            else:
                self._slices[name] = (node, gpus)
            return before != self._slices.get(name)

    def slice_gone(self, body: Mapping[str, Any]) -> bool:
        with self._lock:
            return self._slices.pop(body["metadata"]["name"], None) is not None

    def node_seen(self, node: Mapping[str, Any]) -> bool:
        """Note whether the node offers GPUs through the device plugin; whether that changed."""
        name = node["metadata"]["name"]
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        try:
            plugin = int(str(allocatable.get(c.GPU_RESOURCE, "0"))) > 0
        except ValueError:
            plugin = False
        with self._lock:
            before = name in self._plugin
            (self._plugin.add if plugin else self._plugin.discard)(name)
            return before != plugin

    def node_gone(self, name: str) -> None:
        with self._lock:
            self._plugin.discard(name)

    def dra_only(self) -> dict[str, tuple[DraGpu, ...]]:
        """GPUs by node, for nodes that offer GPUs through DRA and not through the device plugin."""
        by_node: dict[str, list[DraGpu]] = {}
        with self._lock:
            for node, gpus in self._slices.values():
                if node not in self._plugin:
                    by_node.setdefault(node, []).extend(gpus)
        return {node: tuple(gpus) for node, gpus in by_node.items()}


def dra_node_facts(by_node: Mapping[str, Sequence[DraGpu]]) -> list[NodeGpuFacts]:
    """Selection's view of DRA-only nodes: product in GFD's form, the device count, the least memory."""
    facts = []
    for node, gpus in sorted(by_node.items()):
        products = sorted({g.product for g in gpus})
        memories = [g.memory_mib for g in gpus if g.memory_mib is not None]
        facts.append(
            NodeGpuFacts(
                name=node,
                product=gfd_product(products[0]),
                gpus=len(gpus),
                memory_mib=min(memories) if len(memories) == len(gpus) else None,
            )
        )
    return facts


def _only(manifest: ProfileSet, profiles: Sequence[Profile]) -> ProfileSet:
    return manifest.model_copy(update={"profiles": tuple(profiles)})


def _alternatives(
    manifest: ProfileSet,
    chosen: Profile,
    nodes: list[NodeGpuFacts],
    selector: ProfileSelector,
    pinned: bool,
) -> list[tuple[Profile, tuple[str, ...]]]:
    """The chosen profile, then (unless pinned) the next best ones, each with the DRA products it runs on."""
    first = select_profile(_only(manifest, [chosen]), nodes, selector=selector, pinned=chosen.id)
    found = [(chosen, first.gpu_products)]
    remaining = [p for p in manifest.profiles if p.id != chosen.id and p.device == "gpu"]
    while not pinned and remaining and len(found) < MAX_ALTERNATIVES:
        try:
            nxt = select_profile(_only(manifest, remaining), nodes, selector=selector)
        except ProfileError:
            break
        if not nxt.nodes:
            break  # kept only for the autoscaler: no device of it exists to claim
        found.append((nxt.profile, nxt.gpu_products))
        remaining = [p for p in remaining if p.id != nxt.profile.id]
    return found


def _expressions(
    profile: Profile, products: Sequence[str], names: Mapping[str, str], pinned_products: bool
) -> list[str]:
    attrs = f'device.attributes["{NVIDIA_GPU_DRIVER}"]'
    exprs = [f'device.driver == "{NVIDIA_GPU_DRIVER}"']
    if profile.gpu is not None or pinned_products:
        listed = ", ".join(f'"{names.get(p, p)}"' for p in products)
        exprs.append(f"{attrs}.productName in [{listed}]")
    if profile.min_gpu_memory_mib is not None:
        exprs.append(
            f'device.capacity["{NVIDIA_GPU_DRIVER}"].memory.compareTo(quantity("{profile.min_gpu_memory_mib}Mi")) >= 0'
        )
    return exprs


def _describe(profile: Profile, products: Sequence[str], names: Mapping[str, str]) -> str:
    where = " or ".join(names.get(p, p) for p in products) or "GPU"
    memory = f", >= {profile.min_gpu_memory_mib} MiB" if profile.min_gpu_memory_mib is not None else ""
    return f"{profile.id} ({profile.gpus} x {where}{memory})"


def profile_claim(
    owner: Owner,
    spec: NIMServiceSpec,
    manifest: ProfileSet,
    decision: ProfileDecision,
    by_node: Mapping[str, Sequence[DraGpu]],
    selector: ProfileSelector,
) -> ClaimPlan | None:
    """The claim the chosen profile becomes, or None when some node able to run it has the device plugin
    (or none is DRA-only): then GPUs are requested as ``nvidia.com/gpu`` as before."""
    if not decision.nodes or not set(decision.nodes) <= set(by_node):
        return None
    names = {gfd_product(g.product): g.product for gpus in by_node.values() for g in gpus}
    nodes = dra_node_facts(by_node)
    pinned = spec.pinned_profile[0] is not None  # spec.profile or storage.nimCache.profile
    alternatives = _alternatives(manifest, decision.profile, nodes, selector, pinned)
    subrequests = []
    for profile, products in alternatives:
        exprs = _expressions(profile, products, names, bool(selector.gpu_products))
        subrequests.append(
            {
                "name": profile.id[:63].strip("-"),
                "deviceClassName": NVIDIA_GPU_DRIVER,
                "allocationMode": "ExactCount",
                "count": profile.gpus,
                "selectors": [{"cel": {"expression": e}} for e in exprs],
            }
        )
    if len(subrequests) == 1:
        exactly = {k: v for k, v in subrequests[0].items() if k != "name"}
        request: dict[str, Any] = {"name": PROFILE_CLAIM, "exactly": exactly}
    else:
        request = {"name": PROFILE_CLAIM, "firstAvailable": subrequests}
    body = template_body(owner, spec, f"{owner.name}-{PROFILE_CLAIM}", [request])
    listed = ", ".join(_describe(p, prods, names) for p, prods in alternatives)
    how = (
        f"the first available of {listed}; the runtime runs the profile of the GPUs it is given"
        if len(alternatives) > 1
        else listed
    )
    explanation = (
        f"GPUs claimed through DRA (no node able to run it offers them through the device plugin): "
        f"ResourceClaimTemplate {body['metadata']['name']} asks DeviceClass {NVIDIA_GPU_DRIVER} for {how}"
    )
    claim = PodClaim(PROFILE_CLAIM, "the chosen profile", template=body["metadata"]["name"])
    return ClaimPlan(
        claims=(claim,),
        templates=(body,),
        device_classes=(("the chosen profile's claim", NVIDIA_GPU_DRIVER),),
        explanation=explanation,
        has_alternatives=len(alternatives) > 1,
    )


def allocated_alternatives(claims: Sequence[Mapping[str, Any]], pods: Sequence[str]) -> dict[str, int]:
    """How many of these pods got each alternative of the profile's claim, by profile id.

    The scheduler records the alternative it allocated as ``<request>/<subrequest>`` in the claim's
    allocation results; claims made for a pod's ``gpus`` entry name that pod as their owner.
    """
    counts: dict[str, int] = {}
    wanted = set(pods)
    for claim in claims:
        meta = claim.get("metadata") or {}
        if (meta.get("annotations") or {}).get(POD_CLAIM_ANNOTATION) != PROFILE_CLAIM:
            continue
        if not any(r.get("kind") == "Pod" and r.get("name") in wanted for r in meta.get("ownerReferences") or []):
            continue
        results = ((((claim.get("status") or {}).get("allocation") or {}).get("devices") or {}).get("results")) or []
        chosen = {r.get("request", "") for r in results if str(r.get("request", "")).startswith(f"{PROFILE_CLAIM}/")}
        for request in chosen:
            profile = request.split("/", 1)[1]
            counts[profile] = counts.get(profile, 0) + 1
    return counts


def describe_allocation(counts: Mapping[str, int]) -> str:
    """``allocated: vllm-fp8-tp1-h100 to 2 pods, vllm-fp8-tp1-l40s to 1 pod`` (empty when nothing is)."""
    if not counts:
        return ""
    parts = [f"{profile} to {n} pod{'s' if n != 1 else ''}" for profile, n in sorted(counts.items())]
    return "allocated: " + ", ".join(parts)
