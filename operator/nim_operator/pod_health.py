"""Why a NIMService's pods are not ready, in the kubelet's and the scheduler's own words. Pure.

The Deployment only counts available replicas; the reason the others are missing lives in the pods:
a container waiting on an image or a Secret, a runtime that keeps exiting, a pod no node can take.
``find_pod_problem`` picks the one a human should read first, so status and Events can name it.

Messages are built only from what stays the same while the world does (no restart counts, no back-off
delays, no log timestamps), so a pod that keeps failing the same way yields the same problem each time
and status is not rewritten on every kubelet retry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nim_operator import constants as c

#: The ReplicaSet controller's label on every pod it creates: which template (ReplicaSet) a pod is of.
TEMPLATE_HASH_LABEL = "pod-template-hash"
#: A termination message is cut to its last lines and characters: the end of a log holds the error.
MAX_LINES = 5
MAX_CHARS = 600

# A failed pull shows one of these, then ImagePullBackOff until the next try: one cycle, one problem.
_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "RegistryUnavailable", "SignatureValidationFailed"})
# The container cannot be created as specified (bad image reference, missing Secret or ConfigMap key...).
_CREATE_REASONS = frozenset(
    {"InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError", "CreateContainerError"}
)
# The kubelet's back-off message; recent kubelets append the error of the last try.
_BACK_OFF = re.compile(r'Back-off pulling image "(?:[^"\\]|\\.)*"(?:: (?P<error>.*))?', re.DOTALL)

# Lower ranks are read first: a problem of the spec (image, config) explains the others and will not go
# away by waiting; a crash is the runtime's own verdict; an unschedulable pod may yet get a node.
_RANK_CREATE = 0
_RANK_OOM = 1
_RANK_CRASH = 2
_RANK_UNSCHEDULABLE = 3


@dataclass(frozen=True)
class PodProblem:
    """The pod-level reason replicas are missing: ``reason`` is one CamelCase word, ``message`` names the
    pod, the container and the runtime's (or scheduler's) own error."""

    reason: str
    message: str


@dataclass(frozen=True)
class PodHealth:
    """What status reads of one pod. Equal values mean the pod changed nothing status depends on."""

    name: str
    template: str
    created: str
    live: bool
    rank: int
    problem: PodProblem | None


def service_of(pod: Mapping[str, Any]) -> str | None:
    """The NIMService a pod belongs to, from the selector labels the operator puts on its pods.

    Pods are owned by ReplicaSets, not by the NIMService, so ownerReferences do not lead there in one
    step; the selector labels do (both carry the NIMService's name). None for a pod not labelled so.
    """
    labels = (pod.get("metadata") or {}).get("labels") or {}
    name = labels.get(c.LABEL_INSTANCE)
    if not name or labels.get(c.LABEL_NAME) != name:
        return None
    return str(name)


def tail(text: str, *, lines: int = MAX_LINES, chars: int = MAX_CHARS) -> str:
    """The last non-blank lines of a log or termination message on one line, at most ``chars`` long.

    JSON log lines (the runtime logs so under NIM_JSONL_LOGGING) are shown as level and message, so the
    timestamp of each crash does not make every crash a new message.
    """
    kept = [_log_line(line) for line in text.splitlines() if line.strip()][-lines:]
    joined = " | ".join(kept)
    return joined if len(joined) <= chars else "…" + joined[-(chars - 1) :]


def _log_line(line: str) -> str:
    line = line.strip()
    if not line.startswith("{"):
        return line
    try:
        entry = json.loads(line)
    except ValueError:
        return line
    if not isinstance(entry, dict) or "message" not in entry:
        return line
    text = f"{entry.get('level', '')} {entry['message']}".strip()
    exception = str(entry.get("exception") or "").strip()
    if exception:
        text += f": {exception.splitlines()[-1]}"  # the traceback's last line names the exception
    return text


def _pull_error(waiting: Mapping[str, Any], image: str) -> str:
    """A pull failure in one form whichever way the kubelet is reporting it right now.

    Each retry shows ``ErrImagePull`` (message: the runtime's error) and then, until the next one,
    ``ImagePullBackOff`` (message: ``Back-off pulling image "x": ErrImagePull: <the same error>``).
    Both become ``pulling image "x": ErrImagePull: <error>``, so status does not flap with the retries.
    """
    reason = str(waiting.get("reason") or "")
    message = str(waiting.get("message") or "")
    quoted = json.dumps(image)
    if reason == "ImagePullBackOff":
        # The image is taken from the container status, not the message: the kubelet quotes the name
        # with a default tag added, which an ErrImagePull's status does not show.
        matched = _BACK_OFF.fullmatch(message)
        if matched is not None and matched.group("error"):
            return f"pulling image {quoted}: {matched.group('error')}"
        return message or f"Back-off pulling image {quoted}"  # older kubelets say no more
    return f"pulling image {quoted}: {reason}: {message}" if message else f"pulling image {quoted}: {reason}"


def _memory_limit(pod: Mapping[str, Any], container: str) -> str | None:
    for spec in (pod.get("spec") or {}).get("containers") or []:
        if spec.get("name") == container:
            limit = ((spec.get("resources") or {}).get("limits") or {}).get("memory")
            return str(limit) if limit else None
    return None


def _crash(pod: Mapping[str, Any], where: str, name: str, status: Mapping[str, Any]) -> tuple[int, PodProblem] | None:
    """A container that exited and is being restarted, or None.

    Under a Deployment (restartPolicy Always) a failed exit always leads to CrashLoopBackOff, so the
    problem is named so from the first exit on and also while the restarted container is starting again:
    the name does not flap with each cycle. A container that passed its startup probe since (``started``)
    has recovered; its last exit is history.
    """
    state = status.get("state") or {}
    waiting = state.get("waiting") or {}
    looping = waiting.get("reason") == "CrashLoopBackOff"
    if status.get("ready") or ("running" in state and status.get("started")):
        return None
    terminated = state.get("terminated") or (status.get("lastState") or {}).get("terminated")
    if not terminated:
        if looping:  # the last exit was lost (e.g. the node restarted): the kubelet's word is all there is
            return _RANK_CRASH, PodProblem(
                "CrashLoopBackOff", f"{where}: CrashLoopBackOff: the container keeps exiting"
            )
        return None
    code = int(terminated.get("exitCode") or 0)
    cause = str(terminated.get("reason") or "")
    oom = cause == "OOMKilled"
    if code == 0 and not oom and not looping:
        return None
    detail = f"last exit code {code}" + (f" ({cause})" if cause else "")
    if oom:
        limit = _memory_limit(pod, name)
        detail += f", memory limit {limit}" if limit else ""
    said = tail(str(terminated.get("message") or ""))
    detail += f": {said}" if said else ""
    if oom:
        return _RANK_OOM, PodProblem("OOMKilled", f"{where}: OOMKilled: {detail}")
    return _RANK_CRASH, PodProblem("CrashLoopBackOff", f"{where}: CrashLoopBackOff: {detail}")


def _container_problem(
    pod: Mapping[str, Any], pod_name: str, status: Mapping[str, Any]
) -> tuple[int, PodProblem] | None:
    name = str(status.get("name") or "")
    where = f"pod {pod_name}: container {name}"
    waiting = (status.get("state") or {}).get("waiting") or {}
    reason = str(waiting.get("reason") or "")
    if reason in _PULL_REASONS:
        # One reason for the whole retry cycle, the one kubectl shows most of the time.
        error = _pull_error(waiting, str(status.get("image") or ""))
        return _RANK_CREATE, PodProblem("ImagePullBackOff", f"{where}: ImagePullBackOff: {error}")
    if reason in _CREATE_REASONS:
        message = str(waiting.get("message") or "")
        return _RANK_CREATE, PodProblem(reason, f"{where}: {reason}: {message}" if message else f"{where}: {reason}")
    return _crash(pod, where, name, status)


def _unschedulable(pod: Mapping[str, Any], pod_name: str) -> tuple[int, PodProblem] | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            # The verdict comes first ("0/6 nodes are available: ..."), preemption's afterthoughts last.
            said = " ".join(str(cond.get("message") or "").split())
            said = said if len(said) <= MAX_CHARS else said[: MAX_CHARS - 1] + "…"
            message = f"pod {pod_name}: Unschedulable: {said}" if said else f"pod {pod_name}: Unschedulable"
            return _RANK_UNSCHEDULABLE, PodProblem("Unschedulable", message)
    return None


def pod_health(pod: Mapping[str, Any]) -> PodHealth:
    """The problem of one pod (its worst container's, else the scheduler's), and what ranks the pod.

    A pod being deleted, or one that has finished (evicted, say: phase Failed), is not live: its
    ReplicaSet has already replaced it, and its containers' exits are the shutdown, not a fault.
    """
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    name = str(meta.get("name") or "")
    template = str((meta.get("labels") or {}).get(TEMPLATE_HASH_LABEL) or "")
    created = str(meta.get("creationTimestamp") or "")
    live = not meta.get("deletionTimestamp") and status.get("phase") not in ("Succeeded", "Failed")
    found: list[tuple[int, PodProblem]] = []
    if live:
        # Init containers first: one stuck on its image or a Secret keeps the others from ever starting.
        for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
            ranked = _container_problem(pod, name, container)
            if ranked is not None:
                found.append(ranked)
        unscheduled = _unschedulable(pod, name)
        if unscheduled is not None:
            found.append(unscheduled)
    if not found:
        return PodHealth(name, template, created, live, _RANK_UNSCHEDULABLE + 1, None)
    rank, problem = min(found, key=lambda f: f[0])  # stable: ties keep container order
    return PodHealth(name, template, created, live, rank, problem)


def find_pod_problem(pods: Iterable[Mapping[str, Any]]) -> PodProblem | None:
    """The most telling problem among one NIMService's pods, or None when they are healthy or starting.

    Only live pods of the newest ReplicaSet count, the one whose pod was created last: during a rollout
    the old pods are on their way out and their faults are what the new template may already fix, and if
    the new pods fail, that failure is the news. (The pods alone do not say which ReplicaSet the Deployment
    is scaling up; the newest pod is a good witness, as a rollback also creates new pods of the template it
    returns to.) Among those, the lowest rank wins, then the pod name, so the same pods give the same answer.
    """
    health = [h for h in (pod_health(p) for p in pods) if h.live]
    if not health:
        return None
    newest = max(health, key=lambda h: (h.created, h.template)).template
    current = [h for h in health if h.template == newest and h.problem is not None]
    if not current:
        return None
    return min(current, key=lambda h: (h.rank, h.name)).problem


def replica_failure(deployment: Mapping[str, Any] | None) -> PodProblem | None:
    """Why no pod exists at all: the ReplicaSet's pod creation was refused (a RuntimeClass that does not
    exist, a quota, an admission webhook), which the Deployment reports as its ReplicaFailure condition.
    There is no pod to read then, so without this the service would wait without a word."""
    for cond in ((deployment or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            said = " ".join(str(cond.get("message") or "").split())
            reason = str(cond.get("reason") or "FailedCreate")
            return PodProblem(reason, f"the Deployment cannot create pods: {said}" if said else reason)
    return None


def unbound_claim(name: str, pvc: Mapping[str, Any] | None) -> PodProblem | None:
    """Why pods wait that say nothing themselves: the claim they mount is not bound. With a
    WaitForFirstConsumer class the scheduler holds the pod (no condition of its own) while the provisioner
    works; a provisioner that never finishes would otherwise leave the service waiting without a word."""
    if pvc is None:
        return PodProblem("PVCNotFound", f"PersistentVolumeClaim {name} does not exist; the pods wait for it")
    if ((pvc.get("status") or {}).get("phase") or "Pending") == "Bound":
        return None
    named = (pvc.get("spec") or {}).get("storageClassName")
    where = (
        f"storage class {named} has not provided a volume yet"
        if named
        else "it names no storage class (the cluster's default StorageClass, if any, provides volumes)"
    )
    return PodProblem("PVCNotBound", f"PersistentVolumeClaim {name} is not bound: {where}; the pods wait for it")
