"""The Job that asks an image for its own manifest, and how to read its outcome. Pure.

NVIDIA's operator learns a NIM image's profiles by running the image with a shell line that prints the
manifest file and reading the pod's log; the ids it finds there are the only ones the image accepts
in NIM_MODEL_PROFILE. Ours does the same with a Job (so a finished probe is not restarted and the Job
controller's deadline bounds a pull that never ends), and asks our runtime's image through the same
line (``nim-runtime manifest`` answers when no NIM manifest file exists).

The probe runs once per image, not per NIMService: its key is the digest when the reference pins one,
else ``repository:tag``. It needs no GPU; it prefers a GPU node (where the image will run, so the
pull is not wasted) and takes the scheduling constraints of whatever asked for it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nim_operator import constants as c
from nim_operator.pod_health import find_pod_problem, tail
from nim_runtime.profiles import probe_script

#: Labels of the probe's Job and pod; the value is :func:`key_hash` of the image key.
LABEL_PROBE = "nimoperator.dev/manifest-probe"
ANNOTATION_IMAGE = "nimoperator.dev/image"
CONTAINER = "manifest"
#: Large NIM images take minutes to pull; a probe still running after this has failed.
DEADLINE_SECONDS = 900
#: A finished Job the operator did not clean up (it was stopped) goes by itself after this.
TTL_SECONDS = 600
#: Manifests of NIM images list every file of every profile: a few MiB at most.
LOG_LIMIT_BYTES = 16 * 2**20
#: Pod problems waiting will not fix: the probe has failed (the image's own pods will show the same).
STUCK = frozenset({"ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError"})


def image_key(repository: str, tag: str | None) -> str:
    """The cache key of an image: its digest when the reference pins one, else ``repository:tag``."""
    if "@" in repository:
        return repository.split("@", 1)[1]
    if tag and tag.startswith("sha256:"):
        return tag
    return f"{repository}:{tag}" if tag else repository


def split_image(reference: str) -> tuple[str, str | None]:
    """``registry:5000/org/name:tag`` as (repository, tag); a digest reference keeps its digest as tag.

    The tag is after the last colon of the last path segment only: a registry's port is not a tag.
    """
    if "@" in reference:
        repository, digest = reference.split("@", 1)
        return repository, digest
    head, _, last = reference.rpartition("/")
    if ":" in last:
        name, tag = last.split(":", 1)
        return (f"{head}/{name}" if head else name), tag
    return reference, None


def image_ref(repository: str, tag: str | None) -> str:
    """The reference a container pulls: a digest tag is joined with ``@``, any other with ``:``."""
    if "@" in repository or not tag:
        return repository
    return f"{repository}@{tag}" if tag.startswith("sha256:") else f"{repository}:{tag}"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def object_name(key: str) -> str:
    """Name of the probe Job and of the ConfigMap that keeps its result, in the asker's namespace."""
    return f"nim-manifest-{key_hash(key)}"


@dataclass(frozen=True)
class ProbeRequest:
    """An image to learn about, and how pods that pull it must be scheduled in this namespace."""

    namespace: str
    repository: str
    tag: str | None
    pull_policy: str | None = None
    pull_secrets: tuple[str, ...] = ()
    node_selector: tuple[tuple[str, str], ...] = ()
    #: core/v1 Tolerations as JSON text (hashable, compared as written).
    tolerations: tuple[str, ...] = ()
    user_id: int = c.DEFAULT_USER_ID
    group_id: int = c.DEFAULT_GROUP_ID

    @property
    def key(self) -> str:
        return image_key(self.repository, self.tag)

    @property
    def image(self) -> str:
        return image_ref(self.repository, self.tag)


def probe_request(
    namespace: str,
    repository: str,
    tag: str | None,
    *,
    pull_policy: str | None = None,
    pull_secrets: Iterable[str] = (),
    node_selector: Mapping[str, str] | None = None,
    tolerations: Iterable[Mapping[str, Any]] = (),
    user_id: int | None = None,
    group_id: int | None = None,
) -> ProbeRequest:
    return ProbeRequest(
        namespace=namespace,
        repository=repository,
        tag=tag,
        pull_policy=pull_policy,
        pull_secrets=tuple(s for s in pull_secrets if s),
        node_selector=tuple(sorted((node_selector or {}).items())),
        tolerations=tuple(json.dumps(t, sort_keys=True) for t in tolerations),
        user_id=c.DEFAULT_USER_ID if user_id is None else user_id,
        group_id=c.DEFAULT_GROUP_ID if group_id is None else group_id,
    )


def probe_labels(key: str) -> dict[str, str]:
    # name != instance, so the pod watch never takes a probe pod for a NIMService's.
    return {
        c.LABEL_NAME: "nim-manifest-probe",
        c.LABEL_INSTANCE: key_hash(key),
        c.LABEL_COMPONENT: "manifest-probe",
        c.LABEL_MANAGED_BY: c.MANAGED_BY,
        LABEL_PROBE: key_hash(key),
    }


def _tolerations(request: ProbeRequest) -> list[dict[str, Any]]:
    tolerations = [json.loads(t) for t in request.tolerations]
    if not any(t.get("key") == c.GPU_TAINT_KEY for t in tolerations):
        tolerations.append({"key": c.GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"})
    return tolerations


def render_probe_job(request: ProbeRequest) -> dict[str, Any]:
    """The probe: one try, no GPU, restricted, gone by itself after a while if nobody reads it."""
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": request.image,
        "command": ["sh", "-c", probe_script()],
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        # A probe that fails leaves its last log lines as the message status shows.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if request.pull_policy:
        container["imagePullPolicy"] = request.pull_policy
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": request.user_id,
            "runAsGroup": request.group_id,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "tolerations": _tolerations(request),
        # Prefer a GPU node: the image is pulled where its service will run, so the pull is not wasted.
        "affinity": {
            "nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 50,
                        "preference": {
                            "matchExpressions": [{"key": c.GPU_PRESENT_LABEL, "operator": "In", "values": ["true"]}]
                        },
                    }
                ]
            }
        },
    }
    if request.node_selector:
        pod["nodeSelector"] = dict(request.node_selector)
    if request.pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in request.pull_secrets]
    labels = probe_labels(request.key)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": object_name(request.key),
            "namespace": request.namespace,
            "labels": labels,
            "annotations": {ANNOTATION_IMAGE: request.image},
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": DEADLINE_SECONDS,
            "ttlSecondsAfterFinished": TTL_SECONDS,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


@dataclass(frozen=True)
class ProbeOutcome:
    """Where a probe stands: ``done`` with the pod whose log holds the answer, ``failed`` with why, or
    neither (still running, ``message`` says at what). ``ended``: the Job itself has finished, failed or
    not (a pod stuck pulling fails the probe while its Job still runs)."""

    done_pod: str | None = None
    digest: str | None = None
    failed: bool = False
    ended: bool = False
    reason: str = ""
    message: str = ""


def _condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def _digest(pod: Mapping[str, Any]) -> str | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        image_id = str(status.get("imageID") or "")
        if "sha256:" in image_id:
            return "sha256:" + image_id.rsplit("sha256:", 1)[1]
    return None


def probing_message(image: str, namespace: str) -> str:
    """What a service waiting for the probe says, the same from the Job's creation to its answer: the Job's
    steps (pulling, running, finishing) are the Job's news, not each waiting service's, whose status would
    otherwise be rewritten at every step. A pod problem is news, and says so instead."""
    return f"the manifest probe of {image} runs in namespace {namespace} (it pulls the image, then prints its manifest)"


def read_probe(job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]], image: str) -> ProbeOutcome:
    """The probe's state from its Job and pods (as their watches delivered them)."""
    pods = list(pods)
    running = probing_message(image, str(job["metadata"].get("namespace") or ""))
    if _condition(job, "Complete") is not None or _condition(job, "SuccessCriteriaMet") is not None:
        done = [p for p in pods if (p.get("status") or {}).get("phase") == "Succeeded"]
        if done:
            pod = done[-1]
            return ProbeOutcome(done_pod=str(pod["metadata"]["name"]), digest=_digest(pod), ended=True)
        return ProbeOutcome(message=running, ended=True)  # its pod's event is on its way
    failed = _condition(job, "Failed") or _condition(job, "FailureTarget")
    if failed is not None:
        said = _last_words(pods)
        reason = str(failed.get("reason") or "ProbeFailed")
        text = said or str(failed.get("message") or "the probe Job failed")
        return ProbeOutcome(
            failed=True, reason=reason, message=f"the manifest probe of {image} failed ({reason}): {text}", ended=True
        )
    problem = find_pod_problem(pods)
    if problem is not None and problem.reason in STUCK:
        # Kept in the status of every service that runs the image: without the probe pod's name, which is
        # new on every retry, a retry that fails the same way rewrites nothing.
        said = problem.message.split(": ", 1)[1] if problem.message.startswith("pod ") else problem.message
        return ProbeOutcome(failed=True, reason=problem.reason, message=f"the manifest probe of {image}: {said}")
    if problem is not None:
        return ProbeOutcome(message=f"the manifest probe of {image} waits: {problem.message}")
    return ProbeOutcome(message=running)


def _last_words(pods: list[Mapping[str, Any]]) -> str:
    for pod in reversed(pods):
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated") or {}
            if terminated:
                code = terminated.get("exitCode")
                said = tail(str(terminated.get("message") or ""))
                return f"exit code {code}" + (f": {said}" if said else "")
    return ""


def pod_of_probe(pod: Mapping[str, Any]) -> str | None:
    """The key hash a probe pod or Job carries, or None for anything else."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    value = labels.get(LABEL_PROBE)
    return str(value) if value else None
