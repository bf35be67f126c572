"""Pod-level problems, from pods shaped as the API server returns them (pure functions, no cluster)."""

from __future__ import annotations

from typing import Any

import pytest

from nim_operator.api.spec import NIMServiceSpec
from nim_operator.pod_health import MAX_CHARS, PodProblem, find_pod_problem, pod_health, service_of, tail
from nim_operator.status import compute_status
from tests.unit.pods import (
    HASH,
    IMAGE,
    NOT_FOUND,
    OWNER,
    UNSCHEDULABLE,
    backing_off,
    exited,
    make_pod,
    pulling_failed,
    running,
)


def test_image_pull_back_off_names_pod_container_and_the_runtime_error() -> None:
    problem = find_pod_problem([backing_off()])
    assert problem == PodProblem(
        "ImagePullBackOff",
        f'pod llama-{HASH}-4xkz2: container nim: ImagePullBackOff: pulling image "{IMAGE}": ErrImagePull: {NOT_FOUND}',
    )


def test_a_pull_retry_cycle_is_one_unchanging_problem() -> None:
    """The kubelet flips between ErrImagePull and ImagePullBackOff on every retry; status must not."""
    assert find_pod_problem([pulling_failed()]) == find_pod_problem([backing_off()])


def test_back_off_without_the_pull_error_is_reported_as_the_kubelet_says_it() -> None:
    pod = make_pod(state={"waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{IMAGE}"'}})
    problem = find_pod_problem([pod])
    assert problem is not None
    assert (
        problem.message == f'pod llama-{HASH}-4xkz2: container nim: ImagePullBackOff: Back-off pulling image "{IMAGE}"'
    )


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        (
            "InvalidImageName",
            'Failed to apply default image tag "nvcr.io/nim/Meta:1.3": couldn\'t parse image name '
            '"nvcr.io/nim/Meta:1.3": invalid reference format: repository name (nim/Meta) must be lowercase',
        ),
        ("CreateContainerConfigError", 'secret "hf-token" not found'),
        (
            "CreateContainerError",
            'failed to reserve container name "nim_llama-7d9f8c6b5-4xkz2_team-a_uid-4xkz2_0": name '
            '"nim_llama-7d9f8c6b5-4xkz2_team-a_uid-4xkz2_0" is reserved for "5f0c0e2d9a"',
        ),
    ],
)
def test_containers_that_cannot_be_created_carry_the_kubelet_reason_and_message(reason: str, message: str) -> None:
    problem = find_pod_problem([make_pod(state={"waiting": {"reason": reason, "message": message}})])
    assert problem == PodProblem(reason, f"pod llama-{HASH}-4xkz2: container nim: {reason}: {message}")


def test_crash_loop_reports_the_exit_code_and_the_termination_message() -> None:
    logs = "INFO starting\nnim-runtime: NIM_MODEL_PROFILE=vllm-fp8-tp9: unknown profile; valid: vllm-bf16-tp1\n"
    problem = find_pod_problem([exited(2, "Error", logs)])
    assert problem == PodProblem(
        "CrashLoopBackOff",
        f"pod llama-{HASH}-4xkz2: container nim: CrashLoopBackOff: last exit code 2 (Error): INFO starting | "
        "nim-runtime: NIM_MODEL_PROFILE=vllm-fp8-tp9: unknown profile; valid: vllm-bf16-tp1",
    )
    assert "back-off 40s" not in problem.message, "the growing back-off delay would rewrite status each time"


def test_crash_loop_is_one_problem_through_the_restart_cycle() -> None:
    """Back-off, restart, starting again: the same exit stays the same problem, so nothing flaps."""
    looping = exited(1, "Error", "boom")
    restarted = running(ready=False, started=False, last=looping["status"]["containerStatuses"][0]["lastState"])
    assert find_pod_problem([restarted]) == find_pod_problem([looping])


def test_oom_kill_names_the_memory_limit() -> None:
    problem = find_pod_problem([exited(137, "OOMKilled")])
    assert problem == PodProblem(
        "OOMKilled",
        f"pod llama-{HASH}-4xkz2: container nim: OOMKilled: last exit code 137 (OOMKilled), memory limit 16Gi",
    )


def test_json_log_lines_become_level_message_and_exception_without_timestamps() -> None:
    lines = [
        '{"time": "2025-05-01T10:01:03.120Z", "level": "INFO", "logger": "nim_runtime", "message": "loading model"}',
        '{"time": "2025-05-01T10:01:04.001Z", "level": "ERROR", "logger": "nim_runtime", "message": "load failed", '
        '"exception": "Traceback (most recent call last):\\n  File \\"x.py\\", line 1\\nValueError: no weights"}',
    ]
    assert tail("\n".join(lines)) == "INFO loading model | ERROR load failed: ValueError: no weights"


def test_long_termination_messages_keep_their_last_lines_and_characters() -> None:
    text = "\n".join(f"line {i}" for i in range(80))
    assert tail(text) == "line 75 | line 76 | line 77 | line 78 | line 79"
    long = tail("x" * 5000)
    assert len(long) == MAX_CHARS
    assert long.startswith("…")


def test_unschedulable_pod_carries_the_scheduler_message() -> None:
    scheduled = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": UNSCHEDULABLE,
        "lastProbeTime": None,
        "lastTransitionTime": "2025-05-01T10:00:00Z",
    }
    problem = find_pod_problem([make_pod(scheduled=scheduled)])
    assert problem == PodProblem("Unschedulable", f"pod llama-{HASH}-4xkz2: Unschedulable: {UNSCHEDULABLE}")


@pytest.mark.parametrize(
    "pod",
    [
        make_pod(),  # ContainerCreating
        make_pod(state={"waiting": {"reason": "PodInitializing"}}),
        running(ready=False, started=False),  # loading the model
        running(ready=True, started=True),
        # Crashed once long ago, passed its startup probe since: that exit is history.
        running(ready=False, started=True, last={"terminated": {"exitCode": 1, "reason": "Error"}}),
        make_pod(scheduled={"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}),
    ],
    ids=["creating", "initializing", "loading", "ready", "recovered", "gated"],
)
def test_healthy_or_starting_pods_have_no_problem(pod: dict[str, Any]) -> None:
    assert find_pod_problem([pod]) is None
    assert find_pod_problem([]) is None


def test_pods_being_deleted_or_finished_are_ignored() -> None:
    deleting = exited(137, "OOMKilled")
    deleting["metadata"]["deletionTimestamp"] = "2025-05-01T10:05:00Z"
    evicted = exited(137, "Error")
    evicted["status"]["phase"] = "Failed"
    evicted["status"]["reason"] = "Evicted"
    assert find_pod_problem([deleting, evicted]) is None
    assert not pod_health(deleting).live


def test_old_replica_set_pods_do_not_count_once_a_newer_one_exists() -> None:
    old = exited(1, "Error", "old template's crash")
    new = make_pod("9qz7m", template="5c6b7d8f9", created="2025-05-01T11:00:00Z")
    assert find_pod_problem([old, new]) is None, "the new pod is starting; the old one is on its way out"
    broken = make_pod(
        "9qz7m",
        template="5c6b7d8f9",
        created="2025-05-01T11:00:00Z",
        state={"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "hf-token" not found'}},
    )
    problem = find_pod_problem([old, broken])
    assert problem is not None
    assert problem.reason == "CreateContainerConfigError"


def test_the_worst_problem_wins_and_ties_go_by_pod_name() -> None:
    pending = make_pod("aaaaa", scheduled={"type": "PodScheduled", "status": "False", "reason": "Unschedulable"})
    crashing = exited(1, "Error")
    assert find_pod_problem([pending, crashing]) == find_pod_problem([crashing])
    b = make_pod("bbbbb", state={"waiting": {"reason": "CreateContainerConfigError", "message": "b"}})
    a = make_pod("aaaab", state={"waiting": {"reason": "CreateContainerConfigError", "message": "a"}})
    first = find_pod_problem([b, a])
    assert first is not None
    assert first.message.startswith(f"pod llama-{HASH}-aaaab:")
    assert find_pod_problem([a, b]) == first


def test_service_of_reads_the_selector_labels_the_operator_renders() -> None:
    assert service_of(make_pod()) == "llama"
    assert service_of({"metadata": {"labels": {"app.kubernetes.io/instance": "llama"}}}) is None
    assert service_of({"metadata": {}}) is None


def _deployment(available: int) -> dict[str, Any]:
    return {
        "metadata": {"generation": 1},
        "spec": {"replicas": 1},
        "status": {"observedGeneration": 1, "availableReplicas": available, "replicas": 1, "updatedReplicas": 1},
    }


def _status(available: int, problem: PodProblem | None, previous: Any = None, now: str = "t1") -> Any:
    return compute_status(
        owner=OWNER,
        spec=NIMServiceSpec.model_validate({"image": {"repository": "r", "tag": "t"}}),
        generation=1,
        previous=previous,
        profile=None,
        served_model_name="m",
        failure=None,
        deployment=_deployment(available),
        now=now,
        pod_problem=problem,
    )


def test_a_pod_problem_explains_the_ready_condition_without_failing_the_service() -> None:
    problem = find_pod_problem([backing_off()])
    status = _status(0, problem)
    assert status.state == "Pending", "the spec was applied; a new image or the cluster's recovery fixes it"
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert problem is not None
    assert (ready.status, ready.reason) == ("False", "ImagePullBackOff")
    assert ready.message == f"{problem.message} (0/1 replicas available)"
    failed = next(c for c in status.conditions if c.type == "Failed")
    assert failed.status == "False"
    assert _status(0, find_pod_problem([pulling_failed()]), previous=status, now="t2") == status, "no write"


def test_a_ready_service_ignores_pod_problems() -> None:
    ready = _status(1, PodProblem("OOMKilled", "pod x: container nim: OOMKilled"))
    assert ready.state == "Ready"
    assert next(c for c in ready.conditions if c.type == "Ready").reason == "AllReplicasReady"
