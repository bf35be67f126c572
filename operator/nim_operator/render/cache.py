"""A NIMCache's children: the claim that holds the weights and the Job that fills it. Pure.

The claim is never owned by anything a routine edit deletes: with the default retention (Retain) it
has no owner at all, so deleting and recreating a NIMCache (a GitOps rename, a re-install) finds the
weights where they were. The Job is owned by its NIMCache; its template is immutable, so a changed
source means a new Job (the shell deletes the old one, whose hash annotation no longer matches).

Every Job ends with our downloader's completion report (see ``nim_runtime.download``), which is what makes
a cache Ready: hub and catalog sources run ``nim-runtime download`` itself; an NGC source runs NVIDIA's
``download-to-cache`` in the puller image as an init container, then ``nim-runtime download --seal`` in
the runtime image, which reports what the puller wrote.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nim_operator import constants as c
from nim_operator.api.nimcache import NIMCacheSpec
from nim_operator.kube import desired_hash
from nim_runtime.download import PERMANENT_EXIT_CODES

#: The container that runs our downloader (the pod failure policy and the progress reader name it).
CONTAINER = "download"
#: The init container that runs an NGC source's puller image before ours seals what it wrote.
PULLER = "ngc-puller"
CACHE_VOLUME = "model-cache"
TMP_VOLUME = "tmp"
#: Tries of a download that may yet succeed (an unreachable hub), with the Job controller's back-off.
BACKOFF_LIMIT = 4
DEFAULT_REQUESTS = {"cpu": "250m", "memory": "1Gi"}
#: Seconds the downloader waits for a hub's answer (a HEAD, or the next bytes of a file) before a retry.
HUB_TIMEOUT_S = 120


@dataclass(frozen=True)
class Cache:
    """The NIMCache that owns the children."""

    name: str
    namespace: str
    uid: str


def cache_labels(cache: Cache) -> dict[str, str]:
    # name != instance on purpose: a NIMService's pods carry name == instance, and the pod watch tells
    # the two apart by it.
    return {
        c.LABEL_NAME: "nimcache",
        c.LABEL_INSTANCE: cache.name,
        c.LABEL_COMPONENT: "model-cache",
        c.LABEL_MANAGED_BY: c.MANAGED_BY,
        c.LABEL_NIMCACHE: cache.name,
    }


def _owner_reference(cache: Cache) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.CACHE_KIND,
        "name": cache.name,
        "uid": cache.uid,
        "controller": True,
    }


def pvc_name(cache: Cache, spec: NIMCacheSpec) -> str:
    pvc = spec.storage.pvc
    return (pvc.name if pvc and pvc.name else None) or f"{cache.name}-pvc"


def job_name(cache: Cache) -> str:
    return f"{cache.name}-job"


def creates_pvc(spec: NIMCacheSpec) -> bool:
    return bool(spec.storage.pvc and spec.storage.pvc.create)


def render_pvc(cache: Cache, spec: NIMCacheSpec) -> dict[str, Any] | None:
    """The claim to create, or None when the spec names an existing one."""
    pvc = spec.storage.pvc
    if pvc is None or not pvc.create:
        return None
    body: dict[str, Any] = {
        "accessModes": [pvc.volume_access_mode or "ReadWriteOnce"],
        "resources": {"requests": {"storage": str(pvc.size)}},
    }
    # NVIDIA's samples write storageClass: '' to mean "the default class"; an empty storageClassName
    # would mean "no class" to Kubernetes and never bind on a cluster with dynamic provisioning.
    if pvc.storage_class:
        body["storageClassName"] = pvc.storage_class
    meta: dict[str, Any] = {
        "name": pvc_name(cache, spec),
        "namespace": cache.namespace,
        "labels": cache_labels(cache),
    }
    if pvc.annotations:
        meta["annotations"] = dict(pvc.annotations)
    if pvc.retention_policy == "Delete":
        meta["ownerReferences"] = [_owner_reference(cache)]
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": body}


def capacity_bytes(size: int | str | None) -> int | None:
    """A quantity (``50Gi``, ``500M``, ``1073741824``) in bytes; None when absent or unreadable."""
    if size is None:
        return None
    text = str(size).strip()
    units = {
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
        "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    }  # fmt: skip
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            number, scale = text[: -len(suffix)], units[suffix]
            break
    else:
        number, scale = text, 1
    try:
        return int(float(number) * scale)
    except ValueError:
        return None


def _puller_command(spec: NIMCacheSpec, profiles: Sequence[str] | None) -> list[str] | None:
    """NVIDIA's documented entry point of every NIM image (it reads NGC_API_KEY and NIM_CACHE_PATH), for an
    NGC source; None for the sources our downloader fetches itself.

    ``profiles``: the NGC profile ids placement chose (see ``cache_profiles``); None leaves the choice to
    ``spec.source.ngc.model.profiles``, or to the image.
    """
    if spec.source.ngc is None:
        return None
    command = ["download-to-cache"]
    model = spec.source.ngc.model
    chosen = list(profiles) if profiles is not None else (list(model.profiles) if model is not None else [])
    if chosen:
        command += ["--profiles", *chosen]
    return command


def _command(spec: NIMCacheSpec, claim_size: int | None) -> list[str]:
    """The command of our download container (in the runtime image)."""
    source = spec.source
    if source.ngc is not None:
        return ["nim-runtime", "download", "--seal", f"ngc:{source.ngc.model_puller}", "--dest", c.MODEL_STORE]
    if source.catalog is not None:
        return ["nim-runtime", "download", "--catalog", source.catalog.model, "--dest", c.MODEL_STORE]
    hub = source.hf or source.data_store
    assert hub is not None  # admission guarantees exactly one source
    command = ["nim-runtime", "download", "--endpoint", hub.endpoint, "--repo", hub.repo_id]
    command += ["--repo-type", hub.repo_type, "--revision", hub.revision or "main", "--dest", c.MODEL_STORE]
    if claim_size is not None:
        command += ["--capacity-bytes", str(claim_size)]
    return command


def _env(spec: NIMCacheSpec) -> list[dict[str, Any]]:
    ours: list[dict[str, Any]] = [
        {"name": c.ENV_CACHE_PATH, "value": c.MODEL_STORE},
        {"name": "HF_HUB_OFFLINE", "value": "0"},
        {"name": "HOME", "value": "/tmp/home"},
        {"name": "HF_HOME", "value": "/tmp/home/.cache/huggingface"},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
        # huggingface_hub gives a HEAD 10 s by default; a mirror (olah, a NeMo Data Store) may hash a
        # large file before it answers one, and took 19-37 s for a 260 MB file on a loaded node.
        {"name": "HF_HUB_ETAG_TIMEOUT", "value": str(HUB_TIMEOUT_S)},
        {"name": "HF_HUB_DOWNLOAD_TIMEOUT", "value": str(HUB_TIMEOUT_S)},
    ]
    hub = spec.source.hf or spec.source.data_store
    if hub is not None:
        ours.append({"name": "HF_ENDPOINT", "value": hub.endpoint})
    if spec.proxy is not None:
        for name, value in (
            ("HTTP_PROXY", spec.proxy.http_proxy),
            ("HTTPS_PROXY", spec.proxy.https_proxy),
            ("NO_PROXY", spec.proxy.no_proxy),
        ):
            if value:
                ours += [{"name": name, "value": value}, {"name": name.lower(), "value": value}]
    user = {e.get("name") for e in spec.env}
    return [e for e in ours if e["name"] not in user] + [copy.deepcopy(e) for e in spec.env]


def _auth_secret(spec: NIMCacheSpec) -> str | None:
    source = spec.source
    if source.ngc is not None:
        return source.ngc.auth_secret
    hub = source.hf or source.data_store
    return hub.auth_secret if hub is not None else None


def _pull_secrets(spec: NIMCacheSpec, runtime_pull_secrets: tuple[str, ...]) -> list[str]:
    """The runtime image's secrets (every Job runs our downloader), and an NGC puller's own."""
    ngc = spec.source.ngc.pull_secret if spec.source.ngc is not None else None
    return ([ngc] if ngc else []) + [s for s in runtime_pull_secrets if s != ngc]


_RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _resources(spec: NIMCacheSpec) -> dict[str, Any]:
    requests: dict[str, Any] = dict(DEFAULT_REQUESTS)
    limits: dict[str, Any] = {}
    if spec.resources is not None:
        for key, value in (("cpu", spec.resources.cpu), ("memory", spec.resources.memory)):
            if value is not None:
                requests[key] = limits[key] = value
    return {"requests": requests, **({"limits": limits} if limits else {})}


def _container(
    name: str, image: str, command: list[str], spec: NIMCacheSpec, mounts: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "command": command,
        "env": _env(spec),
        "resources": _resources(spec),
        "volumeMounts": copy.deepcopy(mounts),
        # Our downloader writes its JSON report; anything else that fails leaves its last log lines.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": dict(_RESTRICTED),
    }


def _init_containers(
    spec: NIMCacheSpec, mounts: list[dict[str, Any]], profiles: Sequence[str] | None
) -> list[dict[str, Any]]:
    """The user's init containers (with the cache mounted), then an NGC source's puller."""
    found: list[dict[str, Any]] = [
        {
            "name": ic.name,
            "image": f"{ic.image.repository}:{ic.image.tag}",
            **({"command": list(ic.command)} if ic.command else {}),
            **({"args": list(ic.args)} if ic.args else {}),
            **({"env": copy.deepcopy(ic.env)} if ic.env else {}),
            **({"workingDir": ic.working_dir} if ic.working_dir else {}),
            "volumeMounts": [dict(mounts[0])],
        }
        for ic in spec.init_containers
    ]
    command = _puller_command(spec, profiles)
    if command is not None and spec.source.ngc is not None:
        puller = _container(PULLER, spec.source.ngc.model_puller, command, spec, mounts)
        secret = _auth_secret(spec)
        if secret:
            puller["envFrom"] = [{"secretRef": {"name": secret}}]
        found.append(puller)
    return found


def _volumes(cache: Cache, spec: NIMCacheSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts): the claim first, scratch /tmp, and extra CA certificates if asked."""
    mount: dict[str, Any] = {"name": CACHE_VOLUME, "mountPath": c.MODEL_STORE}
    if spec.storage.pvc and spec.storage.pvc.sub_path:
        mount["subPath"] = spec.storage.pvc.sub_path
    mounts = [mount, {"name": TMP_VOLUME, "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [
        {"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": pvc_name(cache, spec)}},
        {"name": TMP_VOLUME, "emptyDir": {}},
    ]
    if spec.cert_config is not None:
        mounts.append({"name": "certs", "mountPath": spec.cert_config.mount_path, "readOnly": True})
        volumes.append({"name": "certs", "configMap": {"name": spec.cert_config.name}})
    return volumes, mounts


def render_job(
    cache: Cache,
    spec: NIMCacheSpec,
    *,
    runtime_image: str,
    runtime_pull_secrets: tuple[str, ...] = (),
    profiles: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The download Job: non-root, read-only root, no GPU and no GPU-node selector (it needs neither)."""
    size = capacity_bytes(spec.storage.pvc.size if spec.storage.pvc and spec.storage.pvc.create else None)
    volumes, mounts = _volumes(cache, spec)
    container = _container(CONTAINER, runtime_image, _command(spec, size), spec, mounts)
    secret = _auth_secret(spec)
    if secret and spec.source.ngc is None:
        container["envFrom"] = [{"secretRef": {"name": secret}}]
    user = spec.user_id if spec.user_id is not None else c.DEFAULT_USER_ID
    group = spec.group_id if spec.group_id is not None else c.DEFAULT_GROUP_ID
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": volumes,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": user,
            "runAsGroup": group,
            "fsGroup": group,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    optional = {
        "initContainers": _init_containers(spec, mounts, profiles) or None,
        "imagePullSecrets": [{"name": s} for s in _pull_secrets(spec, runtime_pull_secrets)] or None,
        "nodeSelector": dict(spec.node_selector) or None,
        "tolerations": copy.deepcopy(spec.tolerations) or None,
        "runtimeClassName": spec.runtime_class_name,
    }
    pod.update({k: v for k, v in optional.items() if v is not None})
    labels = cache_labels(cache)
    job_spec: dict[str, Any] = {
        "backoffLimit": BACKOFF_LIMIT,
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": list(PERMANENT_EXIT_CODES)},
                },
                # A pod evicted or preempted did not fail: its try does not count.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        },
        "template": {"metadata": {"labels": labels}, "spec": pod},
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(cache),
            "namespace": cache.namespace,
            "labels": labels,
            "annotations": {c.ANNOTATION_JOB_HASH: desired_hash(job_spec)},
            "ownerReferences": [_owner_reference(cache)],
        },
        "spec": job_spec,
    }
