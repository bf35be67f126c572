"""Capacity that may exist: the GPU nodes the cluster's autoscalers can add, as one set of GPU facts.

Three sources, each in its own vocabulary, all mapped onto :class:`ScaleUpOption` (product as GFD names
it, GPUs per node, memory per GPU, compute capability) and onto node-affinity requirements the
provisioner itself understands:

- Karpenter NodePools: their requirements (``node.kubernetes.io/instance-type``, Karpenter's AWS labels
  ``karpenter.k8s.aws/instance-gpu-name``/``-count``/``-memory``, GKE's ``cloud.google.com/gke-accelerator``)
  and template labels (GFD's ``nvidia.com/gpu.product``, which a pool may promise), limits and taints.
- Cluster API node groups for the cluster-autoscaler: its scale-from-zero capacity annotations.
- The GPU catalogue ConfigMap (label ``nimoperator.dev/gpu-catalog``), where users describe instance types
  a NodePool names and node groups of autoscalers the API does not show.

Pure: objects in, facts out. Which pools a service may use also depends on its tolerations
(:func:`options_for`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from nim_operator import constants as c
from nim_runtime.profiles import ScaleUpOption
from nim_runtime.profiles import hardware as hw

CATALOG_KEY = "catalog.yaml"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
NODEPOOL_LABEL = "karpenter.sh/nodepool"
AWS_GPU_NAME = "karpenter.k8s.aws/instance-gpu-name"
AWS_GPU_COUNT = "karpenter.k8s.aws/instance-gpu-count"
AWS_GPU_MEMORY = "karpenter.k8s.aws/instance-gpu-memory"
GKE_ACCELERATOR = "cloud.google.com/gke-accelerator"
GKE_ACCELERATOR_COUNT = "cloud.google.com/gke-accelerator-count"
# Cluster API node groups: the cluster-autoscaler's size bounds and scale-from-zero capacity.
CA_MIN_SIZE = "cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size"
CA_MAX_SIZE = "cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size"
CA_CAPACITY = "capacity.cluster-autoscaler.kubernetes.io/"

Requirement = tuple[str, str, tuple[str, ...]]


class CatalogError(ValueError):
    """The GPU catalogue ConfigMap is malformed; the message names the field."""


@dataclass(frozen=True)
class Pool:
    """One NodePool or node group, parsed once per change: its shapes, taints and what blocks it."""

    name: str
    kind: str
    options: tuple[ScaleUpOption, ...]
    taints: tuple[Mapping[str, str], ...] = ()
    blocked: str | None = None
    unknown: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Catalog:
    """The user's GPU catalogue: instance types by name, and node groups the API does not show."""

    instance_types: Mapping[str, ScaleUpOption] = field(default_factory=dict)
    node_groups: tuple[Pool, ...] = ()


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def _option(pool: str, kind: str, product: str, gpus: int, memory: int | None, **extra: Any) -> ScaleUpOption:
    """An option with the facts the hardware table fills in (compute, and memory when not given)."""
    known = hw.resolve(product)
    name = known.product if known else product
    return ScaleUpOption(
        pool=pool,
        kind=kind,
        product=name,
        gpus=gpus,
        memory_mib=memory if memory is not None else (known.memory_mib if known else None),
        compute=known.compute if known else None,
        **extra,
    )


def gpu_from_labels(labels: Mapping[str, str]) -> tuple[str, int | None, int | None] | None:
    """(product, GPUs per node, memory MiB) from node labels in any vocabulary, or None without a GPU.

    GFD's labels win (they are what the node will say after boot); then GKE's accelerator label, then
    Karpenter's AWS labels.
    """
    if product := labels.get(c.GPU_PRODUCT_LABEL):
        return product, _int(labels.get(c.GPU_COUNT_LABEL)), _int(labels.get(c.GPU_MEMORY_LABEL))
    if (accelerator := labels.get(GKE_ACCELERATOR)) and (known := hw.by_gke_accelerator(accelerator)):
        return known.product, _int(labels.get(GKE_ACCELERATOR_COUNT)), known.memory_mib
    if name := labels.get(AWS_GPU_NAME):
        memory = _int(labels.get(AWS_GPU_MEMORY))
        if (known := hw.by_aws_name(name, memory)) is not None:
            return known.product, _int(labels.get(AWS_GPU_COUNT)), known.memory_mib
    return None


def parse_catalog(data: Mapping[str, str], *, where: str = "the GPU catalogue") -> Catalog:
    """The catalogue from a ConfigMap's data; :class:`CatalogError` names the field that is wrong."""
    try:
        raw = yaml.safe_load(data.get(CATALOG_KEY) or "{}") or {}
    except yaml.YAMLError as err:
        raise CatalogError(f"{where}: {CATALOG_KEY} is not YAML: {err}") from err
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: {CATALOG_KEY} must be a mapping with instanceTypes and nodeGroups")
    types: dict[str, ScaleUpOption] = {}
    for name, entry in (raw.get("instanceTypes") or {}).items():
        product, gpus = (entry or {}).get("product"), _int((entry or {}).get("gpus"))
        if not product or not gpus:
            raise CatalogError(f"{where}: instanceTypes.{name} needs product and gpus (a positive integer)")
        types[str(name)] = _option("", "NodePool", str(product), gpus, _int(entry.get("memoryMiB")), shape=str(name))
    groups = [_catalog_group(i, g, where) for i, g in enumerate(raw.get("nodeGroups") or [])]
    return Catalog(instance_types=types, node_groups=tuple(groups))


def _catalog_group(index: int, entry: Any, where: str) -> Pool:
    field_ = f"{where}: nodeGroups[{index}]"
    if not isinstance(entry, dict) or not entry.get("name") or not entry.get("product"):
        raise CatalogError(f"{field_} needs name, product and gpus")
    gpus = _int(entry.get("gpus"))
    if not gpus:
        raise CatalogError(f"{field_}.gpus must be a positive integer")
    selector = {str(k): str(v) for k, v in (entry.get("nodeSelector") or {}).items()}
    requirements = tuple((k, "In", (v,)) for k, v in sorted(selector.items()))
    option = _option(
        str(entry["name"]),
        "node group",
        str(entry["product"]),
        gpus,
        _int(entry.get("memoryMiB")),
        requirements=requirements,
        excluded=not requirements,
    )
    blocked = None if requirements else f"node group {entry['name']} has no nodeSelector to steer pods onto it"
    return Pool(str(entry["name"]), "node group", (option,), tuple(entry.get("taints") or ()), blocked)


def _requirements(pool: Mapping[str, Any]) -> dict[str, tuple[str, tuple[str, ...]]]:
    reqs = (((pool.get("spec") or {}).get("template") or {}).get("spec") or {}).get("requirements") or []
    return {r["key"]: (r.get("operator", "In"), tuple(str(v) for v in r.get("values") or ())) for r in reqs}


def _in_values(reqs: Mapping[str, tuple[str, tuple[str, ...]]], key: str) -> tuple[str, ...]:
    operator, values = reqs.get(key, ("", ()))
    return values if operator == "In" else ()


def _nodepool_shapes(
    name: str, reqs: Mapping[str, tuple[str, tuple[str, ...]]], labels: Mapping[str, str], catalog: Catalog
) -> tuple[list[ScaleUpOption], list[str]]:
    """The node shapes a NodePool can create, from the most specific vocabulary it uses."""
    pin = ((NODEPOOL_LABEL, "In", (name,)),)
    if types := _in_values(reqs, INSTANCE_TYPE_LABEL):
        known = [replace(catalog.instance_types[t], pool=name) for t in types if t in catalog.instance_types]
        typed = [replace(o, requirements=(*pin, (INSTANCE_TYPE_LABEL, "In", (o.shape or "",)))) for o in known]
        return typed, [t for t in types if t not in catalog.instance_types]
    if found := gpu_from_labels(labels):
        product, gpus, memory = found
        return [_option(name, "NodePool", product, gpus or 1, memory, requirements=pin)], []
    options: list[ScaleUpOption] = []
    for key, count_key in ((AWS_GPU_NAME, AWS_GPU_COUNT), (GKE_ACCELERATOR, GKE_ACCELERATOR_COUNT)):
        counts = [n for v in _in_values(reqs, count_key) if (n := _int(v))] or [1]
        memories = [_int(m) for m in _in_values(reqs, AWS_GPU_MEMORY)] or [None]
        for value in _in_values(reqs, key):
            for memory in memories:
                gpu = hw.by_aws_name(value, memory) if key == AWS_GPU_NAME else hw.by_gke_accelerator(value)
                if gpu is None:
                    continue
                for count in counts:
                    narrowed = (*pin, (key, "In", (value,)), (count_key, "In", (str(count),)))
                    options.append(_option(name, "NodePool", gpu.product, count, gpu.memory_mib, requirements=narrowed))
    return options, []


def _limit_block(name: str, pool: Mapping[str, Any], options: Sequence[ScaleUpOption]) -> str | None:
    """Why the pool's limits leave no room for one more GPU node of its smallest shape, or None."""
    limits = (pool.get("spec") or {}).get("limits") or {}
    used = (pool.get("status") or {}).get("resources") or {}
    gpu_limit = _int(limits.get(c.GPU_RESOURCE))
    smallest = min((o.gpus for o in options), default=1)
    if gpu_limit is not None:
        if gpu_limit < smallest:
            return f"limits {c.GPU_RESOURCE}: {gpu_limit} is below one node ({smallest} GPUs): raise spec.limits"
        if gpu_limit - (_int(used.get(c.GPU_RESOURCE)) or 0) < smallest:
            return f"is at its limit {c.GPU_RESOURCE}: {gpu_limit}: raise spec.limits or free its nodes"
    node_limit = _int(limits.get("nodes"))
    if node_limit is not None and node_limit - (_int(used.get("nodes")) or 0) < 1:
        return f"is at its limit nodes: {node_limit}: raise spec.limits or free its nodes"
    return None


def _not_ready(pool: Mapping[str, Any]) -> str | None:
    conditions = (pool.get("status") or {}).get("conditions") or []
    ready = next((cond for cond in conditions if cond.get("type") == "Ready"), None)
    if ready is not None and ready.get("status") == "False":
        return f"is not Ready ({ready.get('reason') or ready.get('message') or 'no reason given'})"
    return None


def nodepool(pool: Mapping[str, Any], catalog: Catalog) -> Pool:
    """A Karpenter NodePool (``karpenter.sh/v1``) as the GPU node shapes it can add."""
    name = pool["metadata"]["name"]
    template = (pool.get("spec") or {}).get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    options, unknown = _nodepool_shapes(name, _requirements(pool), labels, catalog)
    taints = tuple((template.get("spec") or {}).get("taints") or ())
    blocked = _not_ready(pool) or _limit_block(name, pool, options)
    return Pool(name, "NodePool", tuple(options), taints, blocked, tuple(unknown))


def _csv_map(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split(",") if "=" in part)


def _csv_taints(text: str) -> tuple[dict[str, str], ...]:
    """``key=value:Effect,key2:Effect`` as the cluster-autoscaler's taints annotation writes them."""
    taints = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        key_value, _, effect = part.rpartition(":")
        key, _, value = key_value.partition("=")
        taints.append({"key": key, "value": value, "effect": effect})
    return tuple(taints)


def node_group(obj: Mapping[str, Any]) -> Pool | None:
    """A Cluster API MachineDeployment/MachineSet/MachinePool the cluster-autoscaler scales, or None when
    it carries no GPU capacity annotations (CPU groups, or groups that need no scale-from-zero)."""
    meta = obj.get("metadata") or {}
    notes = meta.get("annotations") or {}
    name = meta.get("name", "?")
    gpus = _int(notes.get(CA_CAPACITY + "gpu-count"))
    labels = _csv_map(notes.get(CA_CAPACITY + "labels", ""))
    found = gpu_from_labels(labels)
    if not gpus or found is None or CA_MAX_SIZE not in notes:
        return None
    product, _, memory = found
    requirements = tuple((k, "In", (v,)) for k, v in sorted(labels.items()))
    option = _option(name, "node group", product, gpus, memory, requirements=requirements)
    size = _int((obj.get("spec") or {}).get("replicas")) or 0
    top = _int(notes.get(CA_MAX_SIZE)) or 0
    blocked = f"is at its max size {top} ({CA_MAX_SIZE})" if size >= top else None
    return Pool(name, "node group", (option,), _csv_taints(notes.get(CA_CAPACITY + "taints", "")), blocked)


def tolerated(taint: Mapping[str, str], tolerations: Iterable[Mapping[str, Any]]) -> bool:
    """Whether one of the tolerations tolerates this taint (PreferNoSchedule never keeps a pod off)."""
    if taint.get("effect") == "PreferNoSchedule":
        return True
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint.get("effect"):
            continue
        if not t.get("key") and t.get("operator") == "Exists":
            return True
        if t.get("key") != taint.get("key"):
            continue
        if t.get("operator") == "Exists" or str(t.get("value") or "") == str(taint.get("value") or ""):
            return True
    return False


def options_for(pools: Iterable[Pool], tolerations: Sequence[Mapping[str, Any]]) -> list[ScaleUpOption]:
    """Every pool's shapes for one service, with why a pool adds nothing for it (a limit, a taint its pods
    do not tolerate) in ``blocked``."""
    options: list[ScaleUpOption] = []
    for pool in sorted(pools, key=lambda p: (p.kind, p.name)):
        untolerated = [t for t in pool.taints if not tolerated(t, tolerations)]
        if untolerated:
            t = untolerated[0]
            value = f"={t['value']}" if t.get("value") else ""
            why = f"taints {t['key']}{value}:{t.get('effect')}, which the pods do not tolerate (spec.tolerations)"
            options += [replace(o, blocked=why, excluded=True) for o in pool.options]
        else:
            options += [replace(o, blocked=pool.blocked) for o in pool.options]
    return options
