"""The manifest probe: its Job, how its outcome is read, and the memory that makes it run once per image.

The Job and pod states are the shapes the Job controller and the kubelet report (the cluster tests run
the real ones); ``Kube`` is used as it is, with its HTTP call answered from a dict, so what discovery
writes (the Job, the ConfigMap, the deletion) is what it would send to a real API server.
"""

from __future__ import annotations

import copy
from typing import Any, cast

import pytest
from kubernetes import client

from nim_operator import constants as c
from nim_operator.api.spec import NIMServiceSpec
from nim_operator.discovery import Known, ManifestDiscovery, Probing, Unknown
from nim_operator.manifest_probe import (
    LABEL_PROBE,
    ProbeRequest,
    image_key,
    image_ref,
    object_name,
    probe_request,
    probing_message,
    read_probe,
    render_probe_job,
    split_image,
)
from nim_operator.manifest_source import from_discovery
from nim_runtime.profiles import NOT_FOUND, ImageManifest, RuntimeListing, catalog_listing, probe_script
from tests.unit.nim_manifests import LLAMA_8B_V2
from tests.unit.pods import pulling_failed

IMAGE = "nvcr.io/nim/meta/llama-3.1-8b-instruct"


@pytest.mark.parametrize(
    ("reference", "repository", "tag", "key"),
    [
        ("nvcr.io/nim/meta/llama-3.1-8b-instruct:1.8.0", IMAGE, "1.8.0", f"{IMAGE}:1.8.0"),
        ("registry:5000/org/name", "registry:5000/org/name", None, "registry:5000/org/name"),
        ("registry:5000/org/name:2", "registry:5000/org/name", "2", "registry:5000/org/name:2"),
        ("r.io/x@sha256:" + "a" * 64, "r.io/x", "sha256:" + "a" * 64, "sha256:" + "a" * 64),
    ],
)
def test_image_references_and_keys(reference: str, repository: str, tag: str | None, key: str) -> None:
    assert split_image(reference) == (repository, tag)
    assert image_key(repository, tag) == key
    assert image_ref(repository, tag) == reference


def test_the_probe_job_is_small_restricted_bounded_and_needs_no_gpu() -> None:
    request = probe_request(
        "team-a",
        IMAGE,
        "1.8.0",
        pull_policy="IfNotPresent",
        pull_secrets=["ngc-secret"],
        node_selector={"pool": "gpu"},
        tolerations=[{"key": "dedicated", "operator": "Exists"}],
        user_id=1000,
        group_id=1000,
    )
    job = render_probe_job(request)
    assert job["metadata"]["name"] == object_name(f"{IMAGE}:1.8.0")
    assert job["metadata"]["labels"][LABEL_PROBE] == job["spec"]["template"]["metadata"]["labels"][LABEL_PROBE]
    spec = job["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["ttlSecondsAfterFinished"] > 0
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == f"{IMAGE}:1.8.0"
    assert container["command"] == ["sh", "-c", probe_script()]
    assert c.GPU_RESOURCE not in str(container["resources"])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["imagePullSecrets"] == [{"name": "ngc-secret"}]
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert {t["key"] for t in pod["tolerations"]} == {"dedicated", c.GPU_TAINT_KEY}
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False


def test_the_probe_script_reads_nims_files_then_asks_our_runtime() -> None:
    script = probe_script()
    assert script.index("/opt/nim/etc/default/model_manifest.yaml") < script.index("nim-runtime manifest")
    assert script.endswith(f'echo "{NOT_FOUND}"')


def _job(*conditions: tuple[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "j", "namespace": "team-a", "labels": {LABEL_PROBE: "h"}, "creationTimestamp": None},
        "status": {"conditions": [{"type": t, "status": "True", "reason": r} for t, r in conditions]},
    }


def _pod(phase: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "j-abc", "labels": {LABEL_PROBE: "h"}}, "status": {"phase": phase, **status}}


def test_a_finished_probe_names_its_pod_and_digest() -> None:
    done = _pod("Succeeded", containerStatuses=[{"name": "manifest", "imageID": f"{IMAGE}@sha256:{'b' * 64}"}])
    outcome = read_probe(_job(("Complete", "")), [done], IMAGE)
    assert (outcome.done_pod, outcome.digest, outcome.failed) == ("j-abc", "sha256:" + "b" * 64, False)


def test_an_image_that_cannot_be_pulled_fails_the_probe_at_once() -> None:
    pod = pulling_failed()
    pod["metadata"]["labels"] = {LABEL_PROBE: "h"}
    outcome = read_probe(_job(), [pod], IMAGE)
    assert outcome.failed
    assert outcome.reason == "ImagePullBackOff"
    assert "pulling image" in outcome.message


def test_a_deadline_or_a_failed_cat_fails_the_probe_with_the_job_controllers_words() -> None:
    crashed = _pod("Failed", containerStatuses=[{"state": {"terminated": {"exitCode": 1, "message": "no sh\n"}}}])
    outcome = read_probe(_job(("Failed", "BackoffLimitExceeded")), [crashed], IMAGE)
    assert outcome.failed
    assert outcome.reason == "BackoffLimitExceeded"
    assert outcome.message.endswith("exit code 1: no sh")
    deadline = read_probe(_job(("Failed", "DeadlineExceeded")), [], IMAGE)
    assert deadline.failed
    assert "DeadlineExceeded" in deadline.message


def test_a_probe_in_progress_says_the_same_until_it_answers_or_a_pod_problem_is_news() -> None:
    job, finished = _job(), _job(("Complete", ""))  # in namespace team-a
    said = {read_probe(job, [], IMAGE).message, read_probe(job, [_pod("Running")], IMAGE).message}
    said.add(read_probe(finished, [], IMAGE).message)  # before its pod's event
    assert said == {probing_message(IMAGE, "team-a")}
    assert "runs in namespace team-a" in probing_message(IMAGE, "team-a")
    pending = _pod("Pending", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}])
    assert "waits: " in read_probe(job, [pending], IMAGE).message


class ProbeKube:
    """``Kube`` with its API answered from memory: Jobs, ConfigMaps and pods by path; pod logs by name."""

    def __init__(self) -> None:
        from nim_operator.kube import Kube

        class _Kube(Kube):
            pass

        self.kube = _Kube(cast(client.ApiClient, None))
        self.objects: dict[str, dict[str, Any]] = {}
        self.logs: dict[str, str | Exception] = {}
        self.writes: list[tuple[str, str]] = []
        self.kube.call = self.call  # type: ignore[method-assign]
        self.kube.pod_log = self.pod_log  # type: ignore[method-assign]

    def call(self, method: str, path: str, *, body: Any = None, query: Any = None, content_type: str = "") -> Any:
        if method == "PATCH":
            self.writes.append((method, path))
            created = path not in self.objects
            self.objects[path] = copy.deepcopy(body)
            self.objects[path]["metadata"].setdefault("generation", 1)
            return (201 if created else 200), copy.deepcopy(self.objects[path])
        if method == "POST":  # a ConfigMap's creation
            self.writes.append((method, path))
            path = f"{path}/{body['metadata']['name']}"
            if path in self.objects:
                raise client.ApiException(status=409, reason="AlreadyExists")
            self.objects[path] = copy.deepcopy(body)
            return 201, copy.deepcopy(body)
        if method == "DELETE":
            self.writes.append((method, path))
            self.objects.pop(path, None)
            return 200, {}
        if method == "GET" and path.endswith("/pods"):
            return 200, {"items": []}
        if method == "GET" and path in self.objects:
            return 200, copy.deepcopy(self.objects[path])
        raise client.ApiException(status=404, reason="Not Found")

    def pod_log(self, namespace: str, name: str, container: str, *, limit_bytes: int, timeout: float) -> str:
        said = self.logs[name]
        if isinstance(said, Exception):
            raise said
        return said


def _finish(discovery: ManifestDiscovery, probe: ProbeKube, namespace: str, key: str) -> list[tuple[str, str, str]]:
    """The Job controller and the kubelet: the probe's Job completes and its pod succeeded; who is re-run."""
    path = f"/apis/batch/v1/namespaces/{namespace}/jobs/{object_name(key)}"
    probe.objects[path]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    job = copy.deepcopy(probe.objects[path])
    discovery.observe(job, deleted=False)
    return discovery.observe(_probe_pod(job, "Succeeded"), deleted=False)


def _probe_pod(job: dict[str, Any], phase: str, **status: Any) -> dict[str, Any]:
    pod = _pod(phase, **status)
    pod["kind"] = "Pod"
    pod["metadata"]["labels"] = job["metadata"]["labels"]
    return pod


def test_discovery_probes_once_per_image_keeps_the_answer_and_cleans_up() -> None:
    probe = ProbeKube()
    discovery = ManifestDiscovery(probe.kube)
    request = probe_request("team-a", IMAGE, "1.8.0")
    first = discovery.lookup(request, ("NIMService", "team-a", "llama"))
    assert isinstance(first, Probing)
    job_path = f"/apis/batch/v1/namespaces/team-a/jobs/{object_name(request.key)}"
    assert job_path in probe.objects
    # Asked again while it runs, from another namespace: no second Job, a wait for the first.
    other = discovery.lookup(probe_request("team-b", IMAGE, "1.8.0"), ("NIMService", "team-b", "llama"))
    assert isinstance(other, Probing)
    assert "runs in namespace team-a" in other.message
    probe.logs["j-abc"] = LLAMA_8B_V2
    # Both askers are re-run when the probe moves.
    assert _finish(discovery, probe, "team-a", request.key) == [
        ("NIMService", "team-a", "llama"),
        ("NIMService", "team-b", "llama"),
    ]
    known = discovery.lookup(request, ("NIMService", "team-a", "llama"))
    assert isinstance(known, Known)
    assert isinstance(known.listing, ImageManifest)
    assert len(known.listing.profiles) == 11
    assert job_path not in probe.objects  # the Job is deleted once its log is read
    kept = probe.objects[f"/api/v1/namespaces/team-a/configmaps/{object_name(request.key)}"]
    assert kept["data"]["key"] == f"{IMAGE}:1.8.0"
    assert kept["data"]["kind"] == "nim"
    # Every namespace gets the answer from memory now; a restarted operator reads the ConfigMap.
    writes = len(probe.writes)
    assert discovery.lookup(probe_request("team-b", IMAGE, "1.8.0"), ("NIMService", "team-b", "x")) == known
    restarted = ManifestDiscovery(probe.kube).lookup(request, ("NIMService", "team-a", "llama"))
    assert isinstance(restarted, Known)
    assert restarted.listing == known.listing
    assert len(probe.writes) == writes


ASKER = ("NIMService", "team-a", "llama")
JOB_PATH = f"/apis/batch/v1/namespaces/team-a/jobs/{object_name(f'{IMAGE}:1.8.0')}"


def _probing() -> tuple[ProbeKube, ManifestDiscovery, ProbeRequest, list[float]]:
    """ASKER has started the probe of IMAGE:1.8.0 in team-a; failures are retried after 600 s of ``now``."""
    probe = ProbeKube()
    now = [0.0]
    discovery = ManifestDiscovery(probe.kube, retry_seconds=600, clock=lambda: now[0])
    request = probe_request("team-a", IMAGE, "1.8.0")
    discovery.lookup(request, ASKER)
    return probe, discovery, request, now


def test_a_failed_probe_keeps_its_job_as_the_record_and_a_restart_writes_nothing() -> None:
    probe, discovery, request, now = _probing()
    asker, job_path = ASKER, JOB_PATH
    probe.logs["j-abc"] = client.ApiException(status=500, reason="dial tcp 10.0.0.1:10250: connect: refused")
    _finish(discovery, probe, "team-a", request.key)
    unknown = discovery.lookup(request, asker)
    assert isinstance(unknown, Unknown)
    assert unknown.reason == "ManifestUnreadable"
    assert "could not be read: 500 dial tcp" in unknown.message
    assert discovery.lookup(request, asker) == unknown  # no new Job meanwhile
    assert job_path in probe.objects  # the ended Job stays: the record of the failure, until its TTL
    assert not [w for w in probe.writes if w[0] == "DELETE"]
    writes = len(probe.writes)
    # A restarted operator learns the Job from its start-up listing and its pod from the pod watch: the
    # same answer, for any namespace, and nothing written.
    restarted = ManifestDiscovery(probe.kube, retry_seconds=600, clock=lambda: now[0])
    restarted.seen(copy.deepcopy(probe.objects[job_path]))
    restarted.observe(_probe_pod(probe.objects[job_path], "Succeeded"), deleted=False)
    assert restarted.lookup(probe_request("team-b", IMAGE, "1.8.0"), ("NIMService", "team-b", "x")) == unknown
    assert len(probe.writes) == writes
    # Retried after retry_seconds from the Job while it lasts: its log, readable now, answers.
    now[0] = 601
    probe.logs["j-abc"] = LLAMA_8B_V2
    assert isinstance(discovery.lookup(request, asker), Known)
    assert job_path not in probe.objects  # read: now it goes


def test_once_the_kept_job_is_gone_the_image_is_probed_again_after_the_retry_time() -> None:
    probe, discovery, request, now = _probing()
    asker, job_path = ASKER, JOB_PATH
    probe.logs["j-abc"] = "not a manifest: {"
    _finish(discovery, probe, "team-a", request.key)
    unknown = discovery.lookup(request, asker)
    assert isinstance(unknown, Unknown)
    assert unknown.reason == "InvalidManifest"
    # The Job controller removes the ended Job after its TTL; the askers are re-run once.
    assert discovery.observe(probe.objects.pop(job_path), deleted=True) == [asker]
    assert discovery.lookup(request, asker) == unknown  # remembered until retry_seconds
    assert job_path not in probe.objects
    now[0] = 601
    assert isinstance(discovery.lookup(request, asker), Probing)
    assert job_path in probe.objects


def test_askers_are_re_run_only_when_what_they_would_read_changes() -> None:
    probe, discovery, _, _ = _probing()
    asker = ASKER
    job = copy.deepcopy(probe.objects[JOB_PATH])
    assert discovery.observe(job, deleted=False) == [asker], "first sight of the Job"
    # The pod is created, scheduled, pulls, runs: the same wait for the askers, no re-run.
    for phase in ("Pending", "Pending", "Running"):
        assert discovery.observe(_probe_pod(job, phase), deleted=False) == []
    stuck = _probe_pod(
        job, "Pending", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]
    )
    assert discovery.observe(stuck, deleted=False) == [asker], "a pod problem is news"
    assert discovery.observe(_probe_pod(job, "Running"), deleted=False) == [asker], "and so is its end"
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    assert discovery.observe(job, deleted=False) == [], "complete, its pod not yet seen Succeeded: still waiting"
    assert discovery.observe(_probe_pod(job, "Succeeded"), deleted=False) == [asker], "the answer can be read"


def test_a_probe_stuck_pulling_is_stopped_not_kept() -> None:
    probe, discovery, request, _ = _probing()
    asker = ASKER
    job = copy.deepcopy(probe.objects[JOB_PATH])
    pod = pulling_failed()
    pod["kind"] = "Pod"
    pod["metadata"]["labels"] = job["metadata"]["labels"]
    discovery.observe(job, deleted=False)
    discovery.observe(pod, deleted=False)
    unknown = discovery.lookup(request, asker)
    assert isinstance(unknown, Unknown)
    assert unknown.reason == "ImagePullBackOff"
    assert JOB_PATH not in probe.objects  # its Job still runs: deleted, so the pull stops


def test_what_the_service_does_with_each_answer() -> None:
    spec = NIMServiceSpec.model_validate({"image": {"repository": IMAGE, "tag": "1.8.0"}})
    nim = parse_listing_for_test()
    chosen = from_discovery(spec, Known(f"{IMAGE}:1.8.0", nim))
    assert chosen.manifest == nim
    assert chosen.waiting is None
    waiting = from_discovery(spec, Probing(f"{IMAGE}:1.8.0", "the manifest probe is running"))
    assert waiting.manifest is None
    assert waiting.waiting is not None
    assert waiting.waiting.reason == "DiscoveringManifest"
    unknown = from_discovery(spec, Unknown(f"{IMAGE}:1.8.0", "ImagePullBackOff", "pulling image failed"))
    assert unknown.manifest is None
    assert unknown.waiting is None
    assert "no NIM_MODEL_PROFILE is set, the image selects its own profile" in unknown.about
    none = from_discovery(spec, Known(f"{IMAGE}:1.8.0", None))
    assert none.manifest is None
    assert "carries no model manifest" in none.about
    # Our runtime under another name: its own catalog for the model the spec names.
    ours = RuntimeListing.model_validate(
        __import__("yaml").safe_load(catalog_listing("HuggingFaceTB/SmolLM2-135M-Instruct", "1.0"))
    )
    named = NIMServiceSpec.model_validate(
        {"image": {"repository": "mirror/serving", "tag": "1"}, "model": {"name": "meta/llama-3.1-8b-instruct"}}
    )
    assert from_discovery(named, Known("mirror/serving:1", ours)).manifest == ours.find("meta/llama-3.1-8b-instruct")
    assert from_discovery(spec, Known("mirror/serving:1", ours)).manifest is None


def parse_listing_for_test() -> ImageManifest:
    from nim_runtime.profiles import parse_nim_manifest

    return parse_nim_manifest(LLAMA_8B_V2, fallback_name=IMAGE)


def test_once_answered_and_its_job_gone_the_probe_stops_re_running_its_askers() -> None:
    probe, discovery, request, _ = _probing()
    asker = ASKER
    probe.logs["j-abc"] = f"{NOT_FOUND}\n"
    job = copy.deepcopy(probe.objects[f"/apis/batch/v1/namespaces/team-a/jobs/{object_name(request.key)}"])
    _finish(discovery, probe, "team-a", request.key)
    assert discovery.lookup(request, asker) == Known(f"{IMAGE}:1.8.0", None, None, None)
    # The deletion of the answered probe's Job re-runs the askers a last time; later events, none.
    assert discovery.observe(job, deleted=True) == [asker]
    assert discovery.observe(job, deleted=True) == []
