"""Where a multi-node group (``spec.multiNode``) fits: the nodes' GPUs pooled for profile selection, and
the group's shape (pods per group, GPUs per pod, the one GPU product its pods share). Pure.

A replica of a multi-node NIMService is a LeaderWorkerSet group: one leader pod and ``size - 1`` workers,
each on its own node, together holding the profile's ``tp x pp`` GPUs. NVIDIA's operator takes the shape
from the user (``parallelism.tensor`` GPUs per pod, ``parallelism.pipeline`` pods per group); here either
may be left out and is then derived from the chosen profile and the nodes: as many GPUs per pod as one
node of the chosen product holds (a divisor of the total, so every pod gets the same share), and as many
pods as that takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nim_operator.api.multinode import MultiNode
from nim_runtime.profiles import NodeGpuFacts, Profile

FIELD = "spec.multiNode"


class GroupError(ValueError):
    """The group cannot be laid out or placed; the message names the field and the fix."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


#: The reason of a Failed condition when no node pool can hold one group.
NO_POOL_REASON = "MultiNodeGroupDoesNotFit"
#: The reason when the group's shape contradicts itself or the profile.
SHAPE_REASON = "InvalidMultiNodeGroup"


@dataclass(frozen=True)
class GroupLayout:
    """One group: ``size`` pods (the leader and ``size - 1`` workers) of ``gpus_per_pod`` GPUs each."""

    size: int
    gpus_per_pod: int
    #: Tensor- and pipeline-parallel sizes the engine runs with (NIM_TENSOR/PIPELINE_PARALLEL_SIZE).
    tensor: int
    pipeline: int
    #: The GPU product every pod of a group is pinned to; None when the spec leaves placement to the user.
    product: str | None = None

    @property
    def gpus(self) -> int:
        return self.size * self.gpus_per_pod

    def describe(self) -> str:
        where = f" of {self.product}" if self.product else ""
        pods = "1 pod" if self.size == 1 else f"{self.size} pods"
        return f"groups of {pods} x {self.gpus_per_pod} GPU(s){where}"


def pooled_facts(nodes: Sequence[NodeGpuFacts]) -> list[NodeGpuFacts]:
    """One entry per GPU product with the GPUs of all its nodes added up, for profile selection.

    A group spans nodes, so a profile that needs more GPUs than one node has is still runnable when the
    nodes of one product hold enough together; whether the split works out is checked by :func:`layout`.
    Memory per GPU is the smallest of the product's nodes. Nodes without GPUs pass through unchanged.
    """
    pools: dict[str, list[NodeGpuFacts]] = {}
    out: list[NodeGpuFacts] = []
    for node in nodes:
        if node.product and node.gpus > 0:
            pools.setdefault(node.product, []).append(node)
        else:
            out.append(node)
    for product, members in sorted(pools.items()):
        memories = [n.memory_mib for n in members if n.memory_mib is not None]
        out.append(
            NodeGpuFacts(
                name=f"{product} pool",
                product=product,
                gpus=sum(n.gpus for n in members),
                memory_mib=min(memories) if len(memories) == len(members) else None,
                family=members[0].family,
            )
        )
    return out


def claimed_layout(multi_node: MultiNode) -> GroupLayout:
    """The shape of a group whose devices come from DRA claims (``spec.draResources``): the spec's pipeline
    pods, and no GPU count or product of the operator's (the claims choose the devices, the scheduler
    places each pod where its claim is allocated)."""
    tensor, pipeline = multi_node.parallelism.tensor, multi_node.parallelism.pipeline
    size = pipeline or 1
    return GroupLayout(size=size, gpus_per_pod=tensor or 0, tensor=tensor or 1, pipeline=size)


def _largest_divisor_at_most(total: int, limit: int) -> int:
    return max(d for d in range(1, min(total, limit) + 1) if total % d == 0)


def _shape(multi_node: MultiNode, total: int | None, user_gpus: int | None) -> tuple[int | None, int | None]:
    """(GPUs per pod, pods per group) as far as the spec fixes them; None where the nodes decide."""
    tensor, pipeline = multi_node.parallelism.tensor, multi_node.parallelism.pipeline
    per_pod = tensor or user_gpus
    if total is None:
        return per_pod, pipeline or (None if per_pod is None else 1)
    if per_pod is not None and pipeline is not None and per_pod * pipeline != total:
        raise GroupError(
            SHAPE_REASON,
            f"{FIELD}.parallelism: {per_pod} GPU(s) per pod x pipeline {pipeline} is {per_pod * pipeline} GPUs, but "
            f"the profile needs {total} per replica: set tensor x pipeline to {total}, or pin spec.profile to a "
            "profile of that size",
        )
    for value, name in ((per_pod, "tensor"), (pipeline, "pipeline")):
        if value is not None and total % value:
            raise GroupError(
                SHAPE_REASON,
                f"{FIELD}.parallelism.{name}: {value} does not divide the profile's {total} GPUs per replica: "
                f"use a divisor of {total}",
            )
    if per_pod is not None:
        return per_pod, total // per_pod
    if pipeline is not None:
        return total // pipeline, pipeline
    return None, None


def layout(
    multi_node: MultiNode,
    profile: Profile | None,
    nodes: Sequence[NodeGpuFacts],
    *,
    products: Sequence[str] = (),
    user_gpus: int | None = None,
    waiting_for_nodes: bool = False,
) -> GroupLayout:
    """The group's shape, placed on one GPU product that can hold a whole group.

    ``products`` are the products the chosen profile may run on (none: any GPU node). ``user_gpus`` is the
    ``nvidia.com/gpu`` the spec's resources ask per pod, if any. With ``waiting_for_nodes`` (a selector
    pinned products no node has yet) the group is not checked against the nodes: its pods wait for the
    cluster autoscaler. Raises :class:`GroupError` when the shape contradicts the profile or no pool holds it.
    """
    total = profile.gpus if profile is not None and profile.device == "gpu" else None
    per_pod, size = _shape(multi_node, total, user_gpus)
    if total is None and per_pod is None:
        raise GroupError(
            SHAPE_REASON,
            f"{FIELD}.parallelism.tensor: no profile of this image is known, so the GPUs per pod are not: set "
            "parallelism.tensor (or resources.limits nvidia.com/gpu) and parallelism.pipeline",
        )
    tensor = profile.tp if total is not None and profile else (multi_node.parallelism.tensor or per_pod or 1)
    pipeline = profile.pp if total is not None and profile else (multi_node.parallelism.pipeline or size or 1)
    candidates = [n for n in nodes if n.product and n.gpus > 0 and (not products or n.product in products)]
    if waiting_for_nodes:
        gpus = per_pod or total or 1
        return GroupLayout(size or 1, gpus, tensor, pipeline, products[0] if len(products) == 1 else None)
    best: GroupLayout | None = None
    for product in sorted({n.product for n in candidates if n.product}):
        pool = [n for n in candidates if n.product == product]
        fits = _fit(pool, total, per_pod, size)
        if fits is not None and (best is None or fits[0] > best.gpus_per_pod):
            best = GroupLayout(fits[1], fits[0], tensor, pipeline, product if products else None)
    if best is None:
        raise GroupError(NO_POOL_REASON, _no_pool_message(candidates, total, per_pod, size))
    return best


def _fit(pool: list[NodeGpuFacts], total: int | None, per_pod: int | None, size: int | None) -> tuple[int, int] | None:
    """(GPUs per pod, pods) of a group on this pool's nodes, one pod per node, or None when it does not fit."""
    if per_pod is None:
        if total is None:
            return None
        per_pod = _largest_divisor_at_most(total, max(n.gpus for n in pool))
        size = total // per_pod
    size = size or 1
    able = sum(1 for n in pool if n.gpus >= per_pod)
    return (per_pod, size) if able >= size else None


def _no_pool_message(candidates: list[NodeGpuFacts], total: int | None, per_pod: int | None, size: int | None) -> str:
    if per_pod is not None and size is not None:
        need = f"a group of {size} pod(s) with {per_pod} GPU(s) each needs {size} node(s) of one GPU product"
        fix = (
            f"lower {FIELD}.parallelism.pipeline (pods per group) or tensor (GPUs per pod), or add nodes with "
            f"{per_pod} GPUs"
        )
    else:
        need = f"a group holding {total} GPUs needs nodes of one GPU product that hold them together"
        fix = "pin spec.profile to a smaller profile, or add GPU nodes"
    pools: dict[str, list[int]] = {}
    for n in candidates:
        pools.setdefault(n.product or "", []).append(n.gpus)
    have = (
        ", ".join(f"{p}: {len(g)} node(s) with {max(g)} GPU(s)" for p, g in sorted(pools.items()))
        if pools
        else "no GPU nodes"
    )
    return f"{FIELD}: {need}, and no pool holds one ({have}): {fix}"
