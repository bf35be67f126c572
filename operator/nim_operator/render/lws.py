"""The LeaderWorkerSet of a multi-node NIMService (``spec.multiNode``): one group of pods per replica.

The pod templates start from the Deployment's (so placement, storage, security, probes and whatever else
the Deployment's pod gets are the same) and differ where a group needs it:

- the leader keeps the probes and serves the API (the Service selects leaders only, by ``LABEL_ROLE``);
  workers run no probes, as in NVIDIA's operator (they serve nothing until the leader starts them);
- every pod requests the group's GPUs per pod, on the one GPU product the group was laid out on;
- the env is NVIDIA's multi-node contract (``NIM_MULTI_NODE``, ``NIM_NODE_RANK`` from the LWS worker
  index, tensor/pipeline sizes, leader role; for ``mpi`` the cluster size and start timeout, for ``ray``
  NVIDIA's ``nim-serve-ray`` arguments and port), each entry yielding to one of the user's env;
- a pod restart recreates its whole group (a group is one engine), and rollouts replace one group at a
  time without a surge group (no spare GPU nodes needed).

NVIDIA's MPI launch also mounts an SSH key Secret, a hostfile and a start script into its own images;
those belong to NVIDIA's image contract and are not created (``api.coverage`` says so in status).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING, Any

from nim_operator import constants as c
from nim_operator.api.spec import NIMServiceSpec
from nim_operator.group_layout import GroupLayout
from nim_operator.placement import Placement
from nim_operator.render.deployment import render_deployment
from nim_operator.render.meta import Owner, child_metadata

if TYPE_CHECKING:
    from nim_operator.cache_mount import CacheMount

API_VERSION = "leaderworkerset.x-k8s.io/v1"
KIND = "LeaderWorkerSet"
#: Labels and annotations the LWS controller's webhook puts on every pod of a group.
WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"
GROUP_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/group-index"
NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
SIZE_ANNOTATION = "leaderworkerset.sigs.k8s.io/size"
LEADER_NAME_ANNOTATION = "leaderworkerset.sigs.k8s.io/leader-name"
LEADER = "leader"
WORKER = "worker"
_PROBES = ("livenessProbe", "readinessProbe", "startupProbe")


def lws_name(owner: Owner) -> str:
    """``<name>-lws``: the LWS makes a headless Service of its own name, which must not be ours."""
    return f"{owner.name}-lws"


def _field(path: str) -> dict[str, Any]:
    return {"valueFrom": {"fieldRef": {"fieldPath": path}}}


def _group_env(spec: NIMServiceSpec, group: GroupLayout, role: str) -> list[dict[str, Any]]:
    multi = spec.multi_node
    assert multi is not None
    env: list[dict[str, Any]] = [
        {"name": "NIM_MULTI_NODE", "value": "1"},
        {"name": "NIM_NUM_COMPUTE_NODES", "value": str(group.size)},
        {"name": "NIM_TENSOR_PARALLEL_SIZE", "value": str(group.tensor)},
        {"name": "NIM_PIPELINE_PARALLEL_SIZE", "value": str(group.pipeline)},
        {"name": "NIM_NODE_RANK", **_field(f"metadata.labels['{WORKER_INDEX_LABEL}']")},
        {"name": "NIM_LEADER_ROLE", "value": "1" if role == LEADER else "0"},
    ]
    if multi.ray is None:
        env.append({"name": "NIM_MPI_ALLOW_RUN_AS_ROOT", "value": "0"})
    if role == LEADER and multi.ray is None:
        timeout = multi.mpi.mpi_start_timeout if multi.mpi is not None else 300
        env += [
            {"name": "GPUS_PER_NODE", "value": str(group.gpus_per_pod)},
            {"name": "CLUSTER_START_TIMEOUT", "value": str(timeout)},
            {"name": "CLUSTER_SIZE", **_field(f"metadata.annotations['{SIZE_ANNOTATION}']")},
            {"name": "GROUP_INDEX", **_field(f"metadata.labels['{GROUP_INDEX_LABEL}']")},
        ]
    if role == WORKER:
        env += [
            {"name": "LEADER_NAME", **_field(f"metadata.annotations['{LEADER_NAME_ANNOTATION}']")},
            {"name": "NAMESPACE", **_field("metadata.namespace")},
            {"name": "LWS_NAME", **_field(f"metadata.labels['{NAME_LABEL}']")},
        ]
    return env


def _user_gpus(spec: NIMServiceSpec) -> bool:
    resources = spec.resources
    return resources is not None and any(c.GPU_RESOURCE in (s or {}) for s in (resources.limits, resources.requests))


def _pod_template(
    base: dict[str, Any], spec: NIMServiceSpec, group: GroupLayout, role: str, gpus: bool
) -> dict[str, Any]:
    template = copy.deepcopy(base)
    template["metadata"]["labels"][c.LABEL_ROLE] = role
    container = template["spec"]["containers"][0]
    taken = {e["name"] for e in container.get("env", [])}
    container["env"] = container.get("env", []) + [e for e in _group_env(spec, group, role) if e["name"] not in taken]
    if gpus and not _user_gpus(spec):
        for section in ("limits", "requests"):
            container["resources"][section][c.GPU_RESOURCE] = str(group.gpus_per_pod)
    ray = spec.multi_node.ray if spec.multi_node else None
    if ray is not None:
        port = str(ray.ray_port)
        if not spec.args:
            leader_args = ["nim-serve-ray", "--head", "--port", port]
            container["args"] = (
                leader_args if role == LEADER else ["nim-serve-ray", "--head-address", f"$(LWS_LEADER_ADDRESS):{port}"]
            )
        if role == LEADER:
            container["ports"].append({"name": "ray", "containerPort": ray.ray_port, "protocol": "TCP"})
    if role == WORKER:
        for probe in _PROBES:
            container.pop(probe, None)
    return template


def render_leader_worker_set(
    owner: Owner,
    spec: NIMServiceSpec,
    placement: Placement,
    group: GroupLayout,
    cache: CacheMount | None = None,
) -> dict[str, Any]:
    """The LWS: ``spec.replicas`` groups of ``group.size`` pods, leader first."""
    if group.product is not None:
        placement = dataclasses.replace(placement, gpu_products=(group.product,))
    deployment = render_deployment(owner, spec, placement, cache)
    base = deployment["spec"]["template"]
    gpus = placement.gpus > 0
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": child_metadata(owner, lws_name(owner), spec.labels),
        "spec": {
            "replicas": spec.desired_replicas,
            # Workers are created once the leader pod exists: they read its name and address.
            "startupPolicy": "LeaderCreated",
            "rolloutStrategy": {
                "type": "RollingUpdate",
                "rollingUpdateConfiguration": {"maxUnavailable": 1, "maxSurge": 0},
            },
            "networkConfig": {"subdomainPolicy": "Shared"},
            "leaderWorkerTemplate": {
                "size": group.size,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": _pod_template(base, spec, group, LEADER, gpus),
                "workerTemplate": _pod_template(base, spec, group, WORKER, gpus),
            },
        },
    }


def readiness_view(lws: dict[str, Any] | None) -> dict[str, Any] | None:
    """The LWS's status in the Deployment's terms, which ``status.compute_status`` reads.

    A group counts as available when the LWS counts it ready (all of its pods ready); replicas are groups.
    """
    if lws is None:
        return None
    status = lws.get("status") or {}
    ready = int(status.get("readyReplicas") or 0)
    return {
        "metadata": {"generation": lws.get("metadata", {}).get("generation", 0)},
        "spec": {"replicas": lws.get("spec", {}).get("replicas")},
        "status": {
            "availableReplicas": ready,
            "replicas": int(status.get("replicas") or 0),
            "updatedReplicas": int(status.get("updatedReplicas") or 0),
            "observedGeneration": int(status.get("observedGeneration") or 0),
        },
    }
