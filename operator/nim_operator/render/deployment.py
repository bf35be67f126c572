"""The Deployment: the pod template is where placement, probes and security meet."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from nim_operator import constants as c
from nim_operator.api.spec import NIMServiceSpec, ProbeSpec
from nim_operator.placement import Placement
from nim_operator.render.meta import Owner, child_labels, child_metadata, selector_labels
from nim_operator.render.pod_extras import container_ports, nim_env, restricted_security_context, with_extras

if TYPE_CHECKING:  # at run time cache_mount imports status, which imports the renderers
    from nim_operator.cache_mount import CacheMount

MODEL_VOLUME = "model-store"
SHM_VOLUME = "dshm"
TMP_VOLUME = "tmp"


def pvc_name(owner: Owner, spec: NIMServiceSpec, cache: CacheMount | None = None) -> str | None:
    """The claim mounted at /model-store, if the storage is a PVC or a NIMCache (its status names it)."""
    storage = spec.storage
    if storage is None:
        return None
    if storage.pvc is not None:
        return storage.pvc.name or f"{owner.name}-pvc"
    if storage.nim_cache is not None:
        return cache.claim if cache is not None else f"{storage.nim_cache.name}-pvc"
    return None


def _model_volume(owner: Owner, spec: NIMServiceSpec, cache: CacheMount | None) -> dict[str, Any]:
    storage = spec.storage
    claim = pvc_name(owner, spec, cache)
    if claim is not None:
        return {"name": MODEL_VOLUME, "persistentVolumeClaim": {"claimName": claim}}
    if storage is not None and storage.host_path:
        return {"name": MODEL_VOLUME, "hostPath": {"path": storage.host_path, "type": "DirectoryOrCreate"}}
    size = storage.empty_dir.size_limit if storage and storage.empty_dir else None
    return {"name": MODEL_VOLUME, "emptyDir": {"sizeLimit": size} if size else {}}


def shutdown_timing(grace_seconds: int) -> tuple[int, int]:
    """(preStop sleep, runtime drain timeout) in seconds, fitting inside ``grace_seconds`` with a margin.

    The kubelet counts the grace period from deletion: the preStop sleep runs first (the pod still serves
    while endpoints drop it), then SIGTERM starts the drain, then uvicorn and the engine need time to exit.
    Short grace periods shrink the sleep and the margin rather than the drain to nothing; the drain always
    gets at least a third of the grace period.
    """
    pre_stop = min(c.PRE_STOP_SLEEP_SECONDS, grace_seconds // 3)
    margin = min(c.SHUTDOWN_MARGIN_SECONDS, (grace_seconds - pre_stop) // 2)
    return pre_stop, grace_seconds - pre_stop - margin


def _env(spec: NIMServiceSpec, placement: Placement, cache: CacheMount | None = None) -> list[dict[str, Any]]:
    """Operator env first, then the user's; a user entry with the same name replaces ours."""
    _, drain = shutdown_timing(spec.termination_grace_period_seconds)
    ours: list[dict[str, Any]] = [
        {"name": c.ENV_CACHE_PATH, "value": c.MODEL_STORE},
        {"name": c.ENV_SERVER_PORT, "value": str(spec.expose.service.port)},
        {"name": c.ENV_JSONL_LOGGING, "value": "1"},
        {"name": c.ENV_DRAIN_TIMEOUT, "value": str(drain)},
    ]
    pinned, _ = spec.pinned_profile
    if placement.profile is not None:
        ours.append({"name": c.ENV_MODEL_PROFILE, "value": placement.profile.id})
    elif pinned:
        # No manifest is known for this image: the runtime (NVIDIA's NIM too) selects by this variable.
        ours.append({"name": c.ENV_MODEL_PROFILE, "value": pinned})
    if placement.served_model_name:
        ours.append({"name": c.ENV_SERVED_MODEL_NAME, "value": placement.served_model_name})
    if spec.model and spec.model.name:
        ours.append({"name": c.ENV_MODEL_NAME, "value": spec.model.name})
    if spec.model and spec.model.uri:
        ours.append({"name": c.ENV_MODEL_PATH, "value": spec.model.uri})
    elif cache is not None and cache.model_path:
        # A hub cache holds one model folder: serve it (NVIDIA's universal NIM reads NIM_MODEL_NAME so).
        ours.append({"name": c.ENV_MODEL_PATH, "value": cache.model_path})
    if spec.auth_secret:
        ours += [
            {"name": key, "valueFrom": {"secretKeyRef": {"name": spec.auth_secret, "key": key, "optional": True}}}
            for key in c.SECRET_KEYS
        ]
    ours += nim_env(spec)
    user_names = {e.get("name") for e in spec.env}
    return [e for e in ours if e["name"] not in user_names] + [copy.deepcopy(e) for e in spec.env]


def _probe(setting: ProbeSpec | None, default: tuple[str, int, int, int, int]) -> dict[str, Any] | None:
    if setting is not None and not setting.enabled:
        return None
    if setting is not None and setting.probe:
        return copy.deepcopy(setting.probe)
    path, delay, period, timeout, failures = default
    return {
        "httpGet": {"path": path, "port": c.API_PORT_NAME},
        "initialDelaySeconds": delay,
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _resources(spec: NIMServiceSpec, placement: Placement) -> dict[str, Any]:
    """The user's resources, with the profile's GPUs where the user named none.

    A GPU pod also gets CPU and memory requests where the user gave none: without them it would be
    BestEffort, the first pod the kubelet evicts under memory pressure, while it holds GPUs and tens of GB
    of loaded weights. The defaults (per GPU) fit the smallest common GPU nodes; limits stay unset, so
    loading may use what the node has free.
    """
    resources = spec.resources.model_dump(exclude_none=True) if spec.resources else {}
    if placement.gpus:
        for section in ("limits", "requests"):
            resources.setdefault(section, {})
        user_gpus = resources["limits"].get(c.GPU_RESOURCE) or resources["requests"].get(c.GPU_RESOURCE)
        gpus = str(user_gpus) if user_gpus is not None else str(placement.gpus)
        # Extended resources must have requests == limits.
        resources["limits"][c.GPU_RESOURCE] = gpus
        resources["requests"][c.GPU_RESOURCE] = gpus
        count = int(gpus) if gpus.isdigit() else placement.gpus
        for name, per_gpu, unit in (("cpu", c.CPU_PER_GPU, ""), ("memory", c.MEMORY_GIB_PER_GPU, "Gi")):
            if name not in resources["requests"] and name not in resources["limits"]:
                resources["requests"][name] = f"{per_gpu * count}{unit}"
    return resources


def rollout_strategy(spec: NIMServiceSpec, *, surge_blocked: bool = False) -> dict[str, Any]:
    """The Deployment's strategy: the spec's, else one that keeps serving without needing a spare GPU.

    One replica is replaced with a surge pod, so it serves throughout when there is room for a second pod;
    ``surge_blocked`` (the surge pod of a rollout cannot be scheduled) replaces it in place instead, rather
    than leave the rollout stuck forever. Several replicas (or an autoscaler's) are replaced one at a time
    without a surge: the others serve meanwhile, and no spare GPU is needed.
    """
    if spec.strategy is not None:
        return spec.strategy.model_dump(by_alias=True, exclude_none=True)
    if surge_blocked or spec.autoscaling or spec.desired_replicas != 1:
        return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


def requests_gpus(resources: dict[str, Any]) -> bool:
    return any(c.GPU_RESOURCE in (resources.get(s) or {}) for s in ("limits", "requests"))


def _affinity(spec: NIMServiceSpec, placement: Placement) -> dict[str, Any] | None:
    """The user's affinity AND ('a pool that can add a fitting node' OR 'the node has a chosen product').

    GFD's product label exists only on nodes that booted; an autoscaler cannot promise it, so a pod that
    asked only for it would never make a pool add a node. Each pool shape that can run the profile gets a
    term in the provisioner's own labels (its NodePool, instance types, GPU labels). Those come first:
    Karpenter reads the first term and relaxes to the next; the scheduler takes any.
    """
    affinity = copy.deepcopy(spec.affinity) if spec.affinity else {}
    if spec.pod_affinity is not None and "podAffinity" not in affinity:
        # NVIDIA's deprecated spelling of the same rules; their operator accepts it and renders nothing
        affinity["podAffinity"] = copy.deepcopy(spec.pod_affinity)
    alternatives = [
        [{"key": key, "operator": op, "values": list(values)} for key, op, values in term]
        for term in placement.pool_terms
    ]
    if placement.gpu_products:
        alternatives.append([{"key": c.GPU_PRODUCT_LABEL, "operator": "In", "values": list(placement.gpu_products)}])
    if not alternatives:
        return affinity or None
    node_affinity = affinity.setdefault("nodeAffinity", {})
    required = node_affinity.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    # Terms are ORed, expressions within a term ANDed: each of the user's terms AND each of ours.
    user_terms = required.get("nodeSelectorTerms") or [{}]
    terms = []
    for alternative in alternatives:
        for term in user_terms:
            combined = copy.deepcopy(term)
            combined.setdefault("matchExpressions", []).extend(copy.deepcopy(alternative))
            terms.append(combined)
    required["nodeSelectorTerms"] = terms
    return affinity


def _tolerations(spec: NIMServiceSpec, gpu_pod: bool) -> list[dict[str, Any]]:
    tolerations = copy.deepcopy(spec.tolerations)
    if gpu_pod and not any(t.get("key") == c.GPU_TAINT_KEY for t in tolerations):
        tolerations.append(dict(c.GPU_TOLERATION))
    return tolerations


def _volumes(
    owner: Owner, spec: NIMServiceSpec, cache: CacheMount | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    shm: dict[str, Any] = {"medium": "Memory"}
    if spec.storage and spec.storage.shared_memory_size_limit:
        shm["sizeLimit"] = spec.storage.shared_memory_size_limit
    volumes = [
        _model_volume(owner, spec, cache),
        {"name": SHM_VOLUME, "emptyDir": shm},
        {"name": TMP_VOLUME, "emptyDir": {}},
    ]
    model_mount: dict[str, Any] = {"name": MODEL_VOLUME, "mountPath": c.MODEL_STORE}
    if spec.storage and spec.storage.read_only:
        model_mount["readOnly"] = True
    if spec.storage and spec.storage.pvc and spec.storage.pvc.sub_path:
        model_mount["subPath"] = spec.storage.pvc.sub_path
    if cache is not None:
        # Read-only: a filled cache is shared by every replica, and none may change what the others load.
        model_mount["readOnly"] = True
        if cache.sub_path:
            model_mount["subPath"] = cache.sub_path
    mounts = [model_mount, {"name": SHM_VOLUME, "mountPath": "/dev/shm"}, {"name": TMP_VOLUME, "mountPath": "/tmp"}]
    return volumes, mounts


def _container(
    spec: NIMServiceSpec, placement: Placement, mounts: list[dict[str, Any]], cache: CacheMount | None = None
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": c.NIM_CONTAINER,
        "image": f"{spec.image.repository}:{spec.image.tag}",
        "env": _env(spec, placement, cache),
        "ports": [
            {"name": c.API_PORT_NAME, "containerPort": spec.expose.service.port, "protocol": "TCP"},
            *container_ports(spec),
        ],
        "resources": _resources(spec, placement),
        "volumeMounts": mounts,
        # A runtime that exits at start (an unknown NIM_MODEL_PROFILE, a model that fails to load) writes
        # no termination message file; its last log lines become the message, which status then shows.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": restricted_security_context(),
    }
    if spec.image.pull_policy:
        container["imagePullPolicy"] = spec.image.pull_policy
    if spec.command:
        container["command"] = list(spec.command)
    if spec.args:
        container["args"] = list(spec.args)
    probes = {
        "livenessProbe": _probe(spec.liveness_probe, c.LIVENESS_PROBE),
        "readinessProbe": _probe(spec.readiness_probe, c.READINESS_PROBE),
        "startupProbe": _probe(spec.startup_probe, c.STARTUP_PROBE),
    }
    container.update({k: v for k, v in probes.items() if v is not None})
    pre_stop, _ = shutdown_timing(spec.termination_grace_period_seconds)
    if pre_stop > 0:
        # Deletion removes the pod from endpoints while the kubelet runs this; SIGTERM (and the runtime's
        # 503s) come only after it, once kube-proxy and ingresses stopped sending new requests here.
        # The native sleep action (GA in 1.32) needs no shell in the image.
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": pre_stop}}}
    return container


def render_deployment(
    owner: Owner,
    spec: NIMServiceSpec,
    placement: Placement,
    cache: CacheMount | None = None,
    *,
    surge_blocked: bool = False,
) -> dict[str, Any]:
    volumes, mounts = _volumes(owner, spec, cache)
    container = _container(spec, placement, mounts, cache)
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": spec.termination_grace_period_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": spec.user_id,
            "runAsGroup": spec.group_id,
            "fsGroup": spec.group_id,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    tolerations = _tolerations(spec, requests_gpus(container["resources"]))
    optional = {
        "nodeSelector": dict(spec.node_selector) or None,
        "tolerations": tolerations or None,
        "affinity": _affinity(spec, placement),
        "runtimeClassName": spec.runtime_class_name,
        "priorityClassName": spec.priority_class_name,
        "schedulerName": spec.scheduler_name,
        "imagePullSecrets": [{"name": s} for s in spec.image.pull_secrets] or None,
    }
    pod_spec.update({k: v for k, v in optional.items() if v is not None})
    pod_spec = with_extras(pod_spec, spec)
    annotations = dict(spec.annotations)
    # Karpenter never voluntarily disrupts (consolidates, drifts) a node under a GPU pod: a replica moved
    # loads its model again for minutes. Lifting it once the pod is Ready would take a pod write per start,
    # and the operator never writes pods; empty GPU nodes are still consolidated. A user's own value in
    # spec.annotations ("false" lets Karpenter repack serving pods) stays as it is.
    if requests_gpus(container["resources"]):
        annotations.setdefault(c.DO_NOT_DISRUPT_ANNOTATION, "true")
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(owner)},
        "strategy": rollout_strategy(spec, surge_blocked=surge_blocked),
        # Time for a node to boot, the image to pull and the model to load before the rollout is called
        # stuck; the startup probe covers only the load (it starts with the container).
        "progressDeadlineSeconds": c.PROGRESS_DEADLINE_SECONDS,
        "template": {
            "metadata": {
                "labels": child_labels(owner, spec.labels),
                **({"annotations": annotations} if annotations else {}),
            },
            "spec": pod_spec,
        },
    }
    if not spec.autoscaling:
        # Left out under autoscaling so that the HPA, not this field manager, owns the count.
        deployment_spec["replicas"] = spec.desired_replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_metadata(owner, owner.name, spec.labels),
        "spec": deployment_spec,
    }
