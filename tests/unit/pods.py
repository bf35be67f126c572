"""Pods of the NIMService "llama" shaped as the API server returns them, for the unit tests.

The labels are the ones ``render_deployment`` puts on the pod template, plus the ReplicaSet's
``pod-template-hash``; states and messages are the kubelet's and the scheduler's own.
"""

from __future__ import annotations

from typing import Any

from nim_operator.api.spec import NIMServiceSpec
from nim_operator.placement import Placement
from nim_operator.render import Owner, render_deployment

OWNER = Owner("llama", "team-a", "uid-1")
IMAGE = "nvcr.io/nim/meta/llama-3.1-8b-instruct:1.3"
HASH = "7d9f8c6b5"
NOT_FOUND = (
    f'rpc error: code = NotFound desc = failed to pull and unpack image "{IMAGE}": failed to resolve reference '
    f'"{IMAGE}": {IMAGE}: not found'
)
UNSCHEDULABLE = (
    "0/6 nodes are available: 2 Insufficient nvidia.com/gpu, 4 node(s) didn't match Pod's node affinity/selector. "
    "preemption: 0/6 nodes are available: 2 No preemption victims found for incoming pod, 4 Preemption is not "
    "helpful for scheduling."
)


def _labels(template: str) -> dict[str, str]:
    spec = NIMServiceSpec.model_validate({"image": {"repository": "r", "tag": "t"}})
    labels: dict[str, str] = render_deployment(OWNER, spec, Placement(profile=None))["spec"]["template"]["metadata"][
        "labels"
    ]
    return {**labels, "pod-template-hash": template}


def make_pod(
    suffix: str = "4xkz2",
    *,
    state: dict[str, Any] | None = None,
    last: dict[str, Any] | None = None,
    ready: bool = False,
    started: bool = False,
    restarts: int = 0,
    scheduled: dict[str, Any] | None = None,
    phase: str = "Pending",
    template: str = HASH,
    created: str = "2025-05-01T10:00:00Z",
) -> dict[str, Any]:
    """A pod of the NIMService's Deployment, as GET /api/v1/namespaces/team-a/pods/... answers."""
    name = f"llama-{template}-{suffix}"
    conditions: list[dict[str, Any]] = [scheduled or {"type": "PodScheduled", "status": "True"}]
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "uid": f"uid-{suffix}",
            "creationTimestamp": created,
            "labels": _labels(template),
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"llama-{template}",
                    "uid": "rs-uid",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "containers": [
                {
                    "name": "nim",
                    "image": IMAGE,
                    "resources": {"limits": {"memory": "16Gi", "nvidia.com/gpu": "1"}},
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                }
            ],
            "nodeName": "h100-0",
        },
        "status": {"phase": phase, "conditions": conditions, "qosClass": "Burstable"},
    }
    if scheduled is None:
        pod["status"]["containerStatuses"] = [
            {
                "name": "nim",
                "image": IMAGE,
                "imageID": "",
                "ready": ready,
                "started": started,
                "restartCount": restarts,
                "state": state or {"waiting": {"reason": "ContainerCreating"}},
                "lastState": last or {},
            }
        ]
    else:
        del pod["spec"]["nodeName"]
    return pod


def backing_off() -> dict[str, Any]:
    message = f'Back-off pulling image "{IMAGE}": ErrImagePull: {NOT_FOUND}'
    return make_pod(state={"waiting": {"reason": "ImagePullBackOff", "message": message}})


def pulling_failed() -> dict[str, Any]:
    return make_pod(state={"waiting": {"reason": "ErrImagePull", "message": NOT_FOUND}})


def exited(code: int, reason: str, message: str = "") -> dict[str, Any]:
    terminated: dict[str, Any] = {
        "exitCode": code,
        "reason": reason,
        "startedAt": "2025-05-01T10:01:00Z",
        "finishedAt": "2025-05-01T10:01:04Z",
        "containerID": "containerd://0b1e5",
    }
    if message:
        terminated["message"] = message
    back_off = "back-off 40s restarting failed container=nim pod=llama-7d9f8c6b5-4xkz2_team-a(uid-4xkz2)"
    return make_pod(
        state={"waiting": {"reason": "CrashLoopBackOff", "message": back_off}},
        last={"terminated": terminated},
        restarts=3,
    )


def running(*, ready: bool, started: bool, last: dict[str, Any] | None = None) -> dict[str, Any]:
    return make_pod(
        state={"running": {"startedAt": "2025-05-01T10:02:00Z"}},
        ready=ready,
        started=started,
        last=last,
        phase="Running",
    )
