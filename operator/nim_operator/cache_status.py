"""A NIMCache's status from its claim, its Job and the Job's pods. Pure.

Ready means one thing: the Job completed, which the downloader allows only after every file is written
and its completion marker is in place. A Job that is still running, whatever its pods have written so
far, is InProgress; a half-filled volume is never Ready. Reasons come from the downloader's own
termination message (Unauthorized, NotFound, TooSmall, Unreachable ...) or from the kubelet (an image
that cannot be pulled, a Secret that does not exist), so the condition names what to fix.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nim_operator.api.nimcache import CacheCondition, CacheProgress, NIMCacheStatus
from nim_operator.pod_health import find_pod_problem, tail, unbound_claim
from nim_operator.status import Failure

#: Pod problems that waiting will not fix: the cache is Failed until the spec or the cluster changes.
_STUCK = frozenset({"ImagePullBackOff", "CreateContainerConfigError", "InvalidImageName", "ErrImageNeverPull"})


def termination(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """The downloader's JSON termination message of a finished pod, if it left one."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated") or {}
        message = str(terminated.get("message") or "").strip()
        if not message:
            continue
        try:
            parsed = json.loads(message.splitlines()[-1])
        except ValueError:
            return {"reason": str(terminated.get("reason") or "Error"), "message": tail(message)}
        if isinstance(parsed, dict):
            return parsed
    return None


def _finished(pods: Iterable[Mapping[str, Any]], phase: str) -> list[Mapping[str, Any]]:
    done = [p for p in pods if (p.get("status") or {}).get("phase") == phase]
    return sorted(done, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""))


def _job_condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def human_size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


#: Reasons the Job controller gives a failed Job; the downloader's own reason says more.
_JOB_REASONS = frozenset({"PodFailurePolicy", "BackoffLimitExceeded", "DeadlineExceeded", "JobFailed"})


@dataclass(frozen=True)
class _Reading:
    state: str
    reason: str
    message: str
    progress: CacheProgress | None = None


def _read(
    pvc_name: str, pvc: Mapping[str, Any] | None, job: Mapping[str, Any] | None, pods: list[Mapping[str, Any]]
) -> _Reading:
    if pvc is None:
        return _Reading("Pending", "WaitingForPVC", f"PersistentVolumeClaim {pvc_name} does not exist yet")
    if job is None:
        return _Reading("Pending", "JobPending", "the download Job is being created")
    if _job_condition(job, "Complete") is not None:
        said = next((t for t in (termination(p) for p in reversed(_finished(pods, "Succeeded"))) if t), None)
        progress = None
        message = "the download completed"
        if said is not None and isinstance(said.get("bytes"), int):
            progress = CacheProgress(files=int(said.get("files") or 0), bytes=int(said["bytes"]))
            message = f"{said.get('source', 'the model')}: {progress.files} files, {human_size(progress.bytes)}"
        return _Reading("Ready", "Cached", message, progress)
    failed = _job_condition(job, "Failed")
    last_failure = next((t for t in (termination(p) for p in reversed(_finished(pods, "Failed"))) if t), None)
    if failed is not None:
        if last_failure is not None:
            reason = str(last_failure.get("reason") or "DownloadFailed")
            return _Reading("Failed", reason, str(last_failure.get("message") or ""))
        reason = str(failed.get("reason") or "JobFailed")
        return _Reading("Failed", reason, str(failed.get("message") or f"the download Job failed ({reason})"))
    problem = find_pod_problem(pods)
    if problem is not None and problem.reason in _STUCK:
        return _Reading("Failed", problem.reason, problem.message)
    if problem is not None and problem.reason == "Unschedulable":
        return _Reading("Pending", "Unschedulable", problem.message)
    if last_failure is not None:
        cause = f"{last_failure.get('reason')}: {last_failure.get('message')}"
        return _Reading("InProgress", "Retrying", f"retrying with back-off after: {cause}")
    running = any((p.get("status") or {}).get("phase") == "Running" for p in pods)
    if running:
        return _Reading("InProgress", "Downloading", "the download Job is running")
    if (unbound := unbound_claim(pvc_name, pvc)) is not None:
        # The scheduler holds the pod, saying nothing, while a WaitForFirstConsumer claim is provisioned.
        return _Reading("Pending", unbound.reason, unbound.message.replace("the pods wait", "the download Job waits"))
    return _Reading("Pending", "JobPending", "the download Job's pod is starting")


def _condition(
    previous: list[CacheCondition], type_: str, ok: bool, reason: str, message: str, generation: int, now: str
) -> CacheCondition:
    status = "True" if ok else "False"
    before = next((c for c in previous if c.type == type_), None)
    since = before.last_transition_time if before is not None and before.status == status else now
    return CacheCondition(
        type=type_, status=status, reason=reason, message=message, observed_generation=generation,
        last_transition_time=since,
    )  # fmt: skip


def compute_cache_status(
    *,
    generation: int,
    previous: NIMCacheStatus | None,
    pvc_name: str | None,
    pvc: Mapping[str, Any] | None,
    job: Mapping[str, Any] | None,
    pods: Iterable[Mapping[str, Any]],
    failure: Failure | None,
    now: str,
    waiting: Failure | None = None,
) -> NIMCacheStatus:
    """The whole status for this world; the same world gives the same status (so no write).

    ``waiting`` says why no Job exists yet although nothing failed (the puller image is being asked
    for its manifest).
    """
    before = previous.conditions if previous else []
    if failure is not None:
        reading = _Reading("Failed", failure.reason, failure.message)
    elif waiting is not None:
        reading = _Reading("Pending", waiting.reason, waiting.message)
    else:
        reading = _read(pvc_name or "", pvc, job, list(pods))
    if reading.reason in _JOB_REASONS and previous is not None and previous.state == "Failed":
        # Only the Job's words, because the pods' events have not arrived yet (an operator restart): the
        # downloader's reason, reported before, is still the one to read.
        said = next((x for x in previous.conditions if x.type == "Failed"), None)
        if said is not None and said.reason not in _JOB_REASONS:
            reading = _Reading("Failed", said.reason, said.message)
    ready = reading.state == "Ready"
    failed = reading.state == "Failed"
    conditions = [
        _condition(before, "Ready", ready, reading.reason, reading.message, generation, now),
        _condition(
            before,
            "Failed",
            failed,
            reading.reason if failed else "NotFailed",
            reading.message if failed else "",
            generation,
            now,
        ),
    ]
    progress = reading.progress or (previous.progress if previous and ready else None)
    return NIMCacheStatus(
        state=reading.state,
        pvc=pvc_name if pvc is not None else None,
        conditions=conditions,
        observed_generation=generation,
        progress=progress,
        size=human_size(progress.bytes) if progress is not None else None,
    )
