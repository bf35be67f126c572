"""A NIMCache's status from its claim, its Job, the Job's pods and the downloader's own words. Pure.

Ready means one thing: the downloader reported completion (its termination message, written after the
last file and the completion marker; see ``nim_runtime.download``). A Job that the Job controller calls
complete without that report is not Ready: something other than the downloader ended its pod (a simulated
node fakes success, a replaced command exits 0), and the claim is not known to hold the model. A Job still
running, whatever its pods have written so far, is InProgress; a half-filled volume is never Ready.

Reasons come from the downloader's report (Unauthorized, NotFound, TooSmall, Unreachable ...) or from the
kubelet (an image that cannot be pulled, a Secret that does not exist), so the condition names what to fix.
Progress is published in steps of :data:`PROGRESS_STEP_PERCENT`, so a download costs a handful of status
writes, not one per reading.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nim_operator.api.nimcache import CacheCondition, CachedProfile, CacheProgress, NIMCacheSpec, NIMCacheStatus
from nim_operator.left_behind import LEFT_BEHIND, cache_message
from nim_operator.pod_health import find_pod_problem, tail, unbound_claim
from nim_operator.status import Failure
from nim_runtime.download import COMPLETED
from nim_runtime.profiles import ModelManifest, find_manifest, load_catalog

#: Pod problems that waiting will not fix: the cache is Failed until the spec or the cluster changes.
_STUCK = frozenset({"ImagePullBackOff", "CreateContainerConfigError", "InvalidImageName", "ErrImageNeverPull"})
#: Progress is republished when it moved this many percentage points (or its totals changed, or it ended).
PROGRESS_STEP_PERCENT = 5
#: A complete Job whose pods have not been seen (an operator restart) or were deleted.
AWAITING_REPORT = "AwaitingReport"


def _hub_manifest(repo_id: str) -> ModelManifest | None:
    """The catalog's manifest of a hub repository: by name, or by its ``hf://`` source."""
    found = find_manifest(repo_id)
    if found is not None:
        return found
    wanted = repo_id.casefold()
    for manifest in load_catalog().values():
        if manifest.source.startswith("hf://") and manifest.source[5:].partition("@")[0].casefold() == wanted:
            return manifest
    return None


def cached_profiles(spec: NIMCacheSpec) -> list[CachedProfile]:
    """The profiles a filled cache holds, as far as the spec tells; empty when unknown.

    A catalog or hub model that the catalog knows holds every profile of its manifest (they all load the
    same weights, at the precision and parallelism the engine is given). An NGC source's profiles are
    chosen before its download (``cache_profiles``) and are in status from then on, so none here.
    """
    source = spec.source
    if source.ngc is not None:
        return []
    hub = source.hf or source.data_store
    manifest = find_manifest(source.catalog.model) if source.catalog else (_hub_manifest(hub.repo_id) if hub else None)
    if manifest is None:
        return []
    return [CachedProfile(name=p.id, model=manifest.name, config=p.tags) for p in manifest.profiles]


def _statuses(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def termination(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a finished pod's containers said last: the downloader's JSON, else an exit code and log tail.

    A container that exited 0 without JSON (an init container, a faked pod) says nothing here.
    """
    for status in _statuses(pod):
        terminated = (status.get("state") or {}).get("terminated") or {}
        message = str(terminated.get("message") or "").strip()
        try:
            parsed = json.loads(message.splitlines()[-1]) if message else None
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and "reason" in parsed:
            return parsed
        code = terminated.get("exitCode")
        if not code:
            continue
        cause = str(terminated.get("reason") or "Error")
        where = f"container {status.get('name')} exited {code} ({cause})"
        # A last log line that is not the report (a progress line, a traceback) is still the best clue.
        said = tail(message)
        return {
            "reason": "OOMKilled" if cause == "OOMKilled" else "DownloadFailed",
            "message": f"{where}: {said}" if said else where,
        }
    return None


def completion_report(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """The downloader's report that the store is complete, if this pod left one."""
    said = termination(pod)
    if said is None or said.get("reason") not in COMPLETED or not isinstance(said.get("bytes"), int):
        return None
    return said


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


def progress_of(*, files: int, total_files: int | None, done: int, total: int | None) -> CacheProgress:
    """Progress with its percentage and the text of the Progress column."""
    percent = min(100, done * 100 // total) if total else (100 if total == 0 else None)
    summary = f"{percent}% of {human_size(total or 0)}" if percent is not None else f"{human_size(done)} so far"
    return CacheProgress(
        files=files, total_files=total_files, bytes=done, total_bytes=total, percent=percent, summary=summary
    )


def worth_publishing(before: CacheProgress | None, after: CacheProgress) -> bool:
    """Whether a new reading changes what a reader would conclude (so costs a status write)."""
    if before is None or (before.total_bytes, before.total_files) != (after.total_bytes, after.total_files):
        return True
    if after.percent is None or before.percent is None:
        return after.bytes != before.bytes and after.bytes >= before.bytes * (100 + PROGRESS_STEP_PERCENT) // 100
    return after.percent == 100 or abs(after.percent - before.percent) >= PROGRESS_STEP_PERCENT


#: Reasons the Job controller gives a failed Job; the downloader's own reason says more.
_JOB_REASONS = frozenset({"PodFailurePolicy", "BackoffLimitExceeded", "DeadlineExceeded", "JobFailed"})


@dataclass(frozen=True)
class _Reading:
    state: str
    reason: str
    message: str
    progress: CacheProgress | None = None


def _no_report(job: Mapping[str, Any], pods: list[Mapping[str, Any]]) -> _Reading:
    """A Job the Job controller calls complete, whose pod did not say the download completed."""
    job_name = (job.get("metadata") or {}).get("name") or "the download Job"
    last: Mapping[str, Any] = (_finished(pods, "Succeeded") or [{}])[-1]
    pod = f"its pod {(last.get('metadata') or {}).get('name')}" if last else "its pod"
    node = (last.get("spec") or {}).get("nodeName")
    where = f"{pod} on node {node}" if node else pod
    return _Reading(
        "Failed",
        "NoCompletionReport",
        f"Job {job_name} completed, but {where} left no completion report (the downloader writes one after "
        "the last file), so the claim is not known to hold the model. Something other than the downloader "
        "ended the pod: a simulated node (kwok) reports Job pods succeeded without running them, or the "
        "container's command was replaced. Run the Job on a node that runs containers (spec.nodeSelector, "
        f"spec.tolerations), then delete Job {job_name} to download again.",
    )


def _claim_wait(pvc_name: str, pvc: Mapping[str, Any], scheduler: str | None = None) -> _Reading | None:
    """The download waits on an unbound claim (``pod_health.unbound_claim``, worded for the Job), with the
    scheduler's own words when it gave any."""
    unbound = unbound_claim(pvc_name, pvc)
    if unbound is None:
        return None
    message = unbound.message.replace("the pods wait", "the download Job waits")
    return _Reading("Pending", unbound.reason, f"{message} ({scheduler})" if scheduler else message)


def _read(
    pvc_name: str, pvc: Mapping[str, Any] | None, job: Mapping[str, Any] | None, pods: list[Mapping[str, Any]]
) -> _Reading:
    if pvc is None:
        return _Reading("Pending", "WaitingForPVC", f"PersistentVolumeClaim {pvc_name} does not exist yet")
    if job is None:
        return _Reading("Pending", "JobPending", "the download Job is being created")
    if _job_condition(job, "Complete") is not None:
        succeeded = _finished(pods, "Succeeded")
        report = next((r for r in map(completion_report, reversed(succeeded)) if r), None)
        if report is None and not succeeded:
            name = (job.get("metadata") or {}).get("name")
            return _Reading(
                "Pending",
                AWAITING_REPORT,
                f"Job {name} completed; its pod, which carries the downloader's completion report, has not been "
                f"seen (if it was deleted, delete Job {name} to check the cache again: files already in the claim "
                "are not fetched again)",
            )
        if report is None:
            return _no_report(job, pods)
        files = int(report.get("files") or 0)
        progress = progress_of(files=files, total_files=files, done=int(report["bytes"]), total=int(report["bytes"]))
        message = f"{report.get('source', 'the model')}: {files} files, {human_size(progress.bytes)}"
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
        return _claim_wait(pvc_name, pvc, problem.message) or _Reading("Pending", "Unschedulable", problem.message)
    if last_failure is not None:
        cause = f"{last_failure.get('reason')}: {last_failure.get('message')}"
        return _Reading("InProgress", "Retrying", f"retrying with back-off after: {cause}")
    running = any((p.get("status") or {}).get("phase") == "Running" for p in pods)
    if running:
        return _Reading("InProgress", "Downloading", "the download Job is running")
    # The scheduler holds the pod, saying nothing, while a WaitForFirstConsumer claim is provisioned.
    return _claim_wait(pvc_name, pvc) or _Reading("Pending", "JobPending", "the download Job's pod is starting")


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


def _progress(reading: _Reading, previous: NIMCacheStatus | None, live: CacheProgress | None) -> CacheProgress | None:
    """What status shows: the report when Ready, the downloader's newest reading (in steps) while it runs."""
    if reading.progress is not None:
        return reading.progress
    before = previous.progress if previous is not None and previous.state == "InProgress" else None
    if reading.state == "Failed":
        return previous.progress if previous is not None and previous.state in ("InProgress", "Failed") else None
    if live is None or reading.state != "InProgress":
        return before
    return live if worth_publishing(before, live) else before


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
    live: CacheProgress | None = None,
    profiles: Sequence[CachedProfile] = (),
    left_behind: Sequence[str] = (),
    namespace: str = "",
    waiting: Failure | None = None,
) -> NIMCacheStatus:
    """The whole status for this world; the same world gives the same status (so no write).

    ``live`` is the downloader's newest progress line (read from its pod's log by the shell); ``profiles``
    are what the cache holds once Ready; ``left_behind`` names claims this NIMCache created under an
    earlier ``spec.storage.pvc.name``. ``waiting`` says why no Job exists yet although nothing failed (the
    puller image is being asked for its manifest).
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
    if reading.reason == AWAITING_REPORT and previous is not None and previous.state == "Ready":
        # The report was read before (its pod is gone now, or not seen yet after a restart): still Ready.
        said = next((x for x in previous.conditions if x.type == "Ready"), None)
        if said is not None:
            reading = _Reading("Ready", said.reason, said.message, previous.progress)
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
    if left_behind:
        message = cache_message(namespace, left_behind, claim=pvc_name)
        conditions.append(_condition(before, LEFT_BEHIND, True, "OldClaim", message, generation, now))
    progress = _progress(reading, previous, live)
    modes = (pvc or {}).get("status", {}).get("accessModes") or (pvc or {}).get("spec", {}).get("accessModes") or []
    return NIMCacheStatus(
        state=reading.state,
        pvc=pvc_name if pvc is not None else None,
        profiles=list(profiles) if ready else [],
        conditions=conditions,
        observed_generation=generation,
        progress=progress,
        size=human_size(progress.bytes) if ready and progress is not None else None,
        access_modes=[str(m) for m in modes],
    )
