"""NIMCache's pure core: the claim and Job it renders, the status it reads, how a NIMService mounts it.

NVIDIA's sample NIMCaches (``../shared/compat/nvidia-samples``) are parsed by our typed spec unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from nim_operator import constants as c
from nim_operator.api.nimcache import NIMCacheSpec
from nim_operator.api.spec import NIMServiceSpec
from nim_operator.cache_mount import cache_mount
from nim_operator.cache_status import compute_cache_status
from nim_operator.placement import Placement
from nim_operator.render import Owner, render_deployment
from nim_operator.render.cache import Cache, capacity_bytes, render_job, render_pvc
from nim_operator.status import Failure

CACHE = Cache("smollm2", "team-a", "cache-uid")
SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "compat" / "nvidia-samples"
NOW = "2026-12-03T08:00:00Z"


def _hf(**storage: Any) -> NIMCacheSpec:
    return NIMCacheSpec.model_validate(
        {
            "source": {"hf": {"endpoint": "http://hub.hub:8090", "namespace": "HuggingFaceTB", "modelName": "SmolLM2"}},
            "storage": {"pvc": {"create": True, "size": "2Gi", **storage}},
        }
    )


def _sample_caches() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(SAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "NIMCache":
                found.append((f"{path.relative_to(SAMPLES)}:{doc['metadata']['name']}", doc))
    return found


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="NVIDIA's samples are read from ../shared/compat")
def test_every_nvidia_sample_nimcache_parses() -> None:
    samples = _sample_caches()
    assert len(samples) >= 30  # 33 at the pinned commit; the file count is the upstream's, not ours
    for where, doc in samples:
        spec = NIMCacheSpec.model_validate(doc["spec"])
        assert spec.source.ngc or spec.source.hf or spec.source.data_store, where


def test_unknown_fields_and_a_second_source_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"Extra inputs"):
        NIMCacheSpec.model_validate({"source": {"hf": {"endpoint": "http://x"}}, "storage": {}, "bogus": 1})


def test_created_claim_is_not_owned_by_default_and_owned_under_delete_retention() -> None:
    kept = render_pvc(CACHE, _hf())
    assert kept is not None
    assert "ownerReferences" not in kept["metadata"]
    assert kept["metadata"]["name"] == "smollm2-pvc"
    assert kept["metadata"]["labels"][c.LABEL_NIMCACHE] == "smollm2"
    assert kept["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}}
    dropped = render_pvc(CACHE, _hf(retentionPolicy="Delete"))
    assert dropped is not None
    assert dropped["metadata"]["ownerReferences"][0]["uid"] == "cache-uid"


def test_empty_storage_class_means_the_default_class() -> None:
    pvc = render_pvc(CACHE, _hf(storageClass=""))
    assert pvc is not None
    assert "storageClassName" not in pvc["spec"]


def test_hub_job_runs_the_runtime_downloader_without_gpu_or_gpu_node_selector() -> None:
    job = render_job(CACHE, _hf(), runtime_image="localhost/nim-runtime:dev")
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "localhost/nim-runtime:dev"
    assert container["command"][:2] == ["nim-runtime", "download"]
    assert "--capacity-bytes" in container["command"]
    assert container["command"][container["command"].index("--capacity-bytes") + 1] == str(2 * 2**30)
    assert "nvidia.com/gpu" not in str(container["resources"])
    assert "nodeSelector" not in pod
    assert "affinity" not in pod
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["HF_ENDPOINT"] == "http://hub.hub:8090"
    assert env["HF_HUB_OFFLINE"] == "0"
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob"
    assert rules[0]["onExitCodes"]["values"] == [3, 4, 5]


def test_job_hash_changes_with_the_source_only() -> None:
    one = render_job(CACHE, _hf(), runtime_image="i:1")
    same = render_job(CACHE, _hf(), runtime_image="i:1")
    other = render_job(
        CACHE,
        NIMCacheSpec.model_validate(
            {
                "source": {"hf": {"endpoint": "http://hub.hub:8090", "namespace": "x", "modelName": "y"}},
                "storage": {"pvc": {"create": True, "size": "2Gi"}},
            }
        ),
        runtime_image="i:1",
    )
    key = c.ANNOTATION_JOB_HASH
    assert one["metadata"]["annotations"][key] == same["metadata"]["annotations"][key]
    assert one["metadata"]["annotations"][key] != other["metadata"]["annotations"][key]


def test_ngc_job_runs_the_pullers_download_to_cache_then_seals_it_with_our_downloader() -> None:
    spec = NIMCacheSpec.model_validate(
        {
            "source": {
                "ngc": {
                    "modelPuller": "nvcr.io/nim/meta/llama-3.1-8b-instruct:1.3",
                    "pullSecret": "ngc-secret",
                    "authSecret": "ngc-api-secret",
                    "model": {"profiles": ["abc123"]},
                }
            },
            "storage": {"pvc": {"create": True, "size": "50Gi"}},
        }
    )
    job = render_job(CACHE, spec, runtime_image="localhost/nim-runtime:dev", runtime_pull_secrets=("ours",))
    pod = job["spec"]["template"]["spec"]
    [puller] = pod["initContainers"]
    assert puller["image"] == "nvcr.io/nim/meta/llama-3.1-8b-instruct:1.3"
    assert puller["command"] == ["download-to-cache", "--profiles", "abc123"]
    assert puller["envFrom"] == [{"secretRef": {"name": "ngc-api-secret"}}]
    assert puller["securityContext"]["runAsNonRoot"] is True
    # The report that makes the cache Ready comes from our downloader, which holds no NGC key.
    [sealer] = pod["containers"]
    assert sealer["image"] == "localhost/nim-runtime:dev"
    assert sealer["command"][:4] == [
        "nim-runtime",
        "download",
        "--seal",
        "ngc:nvcr.io/nim/meta/llama-3.1-8b-instruct:1.3",
    ]
    assert "envFrom" not in sealer
    assert pod["imagePullSecrets"] == [{"name": "ngc-secret"}, {"name": "ours"}]
    # Only our downloader's exit codes fail the Job at once; the puller's are retried with back-off.
    assert job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["containerName"] == sealer["name"]


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ("50Gi", 50 * 2**30),
        ("500M", 500 * 10**6),
        ("1073741824", 2**30),
        (2048, 2048),
        ("1.5Gi", 3 * 2**29),
        (None, None),
    ],
)
def test_capacity_bytes(size: int | str | None, expected: int | None) -> None:
    assert capacity_bytes(size) == expected


def _job(*conditions: str, uid: str = "job-uid") -> dict[str, Any]:
    return {
        "metadata": {"name": "smollm2-job", "uid": uid},
        "status": {"conditions": [{"type": t, "status": "True", "reason": f"{t}Reason"} for t in conditions]},
    }


def _pod(phase: str, *, message: str = "", waiting: dict[str, Any] | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {"waiting": waiting} if waiting else {"terminated": {"exitCode": 0, "message": message}}
    return {
        "metadata": {"name": f"smollm2-job-{phase.lower()}", "creationTimestamp": "2026-12-03T07:00:00Z"},
        "status": {"phase": phase, "containerStatuses": [{"name": "download", "image": "i:1", "state": state}]},
    }


PVC = {"metadata": {"name": "smollm2-pvc"}, "status": {"phase": "Bound"}}


def _status(job: dict[str, Any] | None, pods: list[dict[str, Any]], pvc: dict[str, Any] | None = PVC) -> Any:
    return compute_cache_status(
        generation=2, previous=None, pvc_name="smollm2-pvc", pvc=pvc, job=job, pods=pods, failure=None, now=NOW
    )


def test_ready_only_when_the_job_completed_with_the_downloaders_summary() -> None:
    summary = '{"reason": "Downloaded", "source": "hub/x@main", "files": 7, "bytes": 270000000}'
    status = _status(_job("Complete"), [_pod("Succeeded", message=summary)])
    assert status.state == "Ready"
    assert status.pvc == "smollm2-pvc"
    assert status.progress is not None
    assert status.progress.files == 7
    assert status.progress.percent == 100
    assert status.progress.summary == "100% of 257.5 MiB"
    assert status.size == "257.5 MiB"
    ready = next(x for x in status.conditions if x.type == "Ready")
    assert ready.status == "True"
    assert ready.observed_generation == 2


def test_a_running_job_is_in_progress_never_ready() -> None:
    running = {"metadata": {"name": "p", "creationTimestamp": NOW}, "status": {"phase": "Running"}}
    assert _status(_job(), [running]).state == "InProgress"


def test_a_failed_job_reports_the_downloaders_reason() -> None:
    said = '{"reason": "NotFound", "message": "model acme/nope at http://hub does not exist"}'
    failed = _pod("Failed", message=said)
    status = _status(_job("Failed"), [failed])
    assert status.state == "Failed"
    cond = next(x for x in status.conditions if x.type == "Failed")
    assert cond.status == "True"
    assert cond.reason == "NotFound"
    assert "acme/nope" in cond.message


def test_a_failed_try_that_will_be_retried_is_in_progress_with_its_cause() -> None:
    said = '{"reason": "Unreachable", "message": "cannot reach http://hub: refused"}'
    status = _status(_job(), [_pod("Failed", message=said)])
    assert status.state == "InProgress"
    ready = next(x for x in status.conditions if x.type == "Ready")
    assert ready.reason == "Retrying"
    assert "Unreachable" in ready.message


def test_a_missing_secret_fails_the_cache_with_the_kubelets_words() -> None:
    waiting = {"reason": "CreateContainerConfigError", "message": 'secret "hf-secret" not found'}
    status = _status(_job(), [_pod("Pending", waiting=waiting)])
    assert status.state == "Failed"
    assert "hf-secret" in next(x for x in status.conditions if x.type == "Failed").message


def test_no_claim_yet_is_pending_and_a_failure_is_failed() -> None:
    assert _status(None, [], pvc=None).state == "Pending"
    failed = compute_cache_status(
        generation=1,
        previous=None,
        pvc_name="x",
        pvc=None,
        job=None,
        pods=[],
        failure=Failure("PVCNotOwned", "PersistentVolumeClaim x exists"),
        now=NOW,
    )
    assert failed.state == "Failed"
    assert failed.conditions[1].reason == "PVCNotOwned"


def test_same_world_same_status() -> None:
    first = _status(_job(), [])
    again = compute_cache_status(
        generation=2, previous=first, pvc_name="smollm2-pvc", pvc=PVC, job=_job(), pods=[], failure=None, now="later"
    )
    assert again == first


def _cache_body(state: str, source: dict[str, Any]) -> dict[str, Any]:
    return {
        "spec": {"source": source, "storage": {"pvc": {"create": True, "size": "2Gi", "subPath": "models"}}},
        "status": {
            "state": state,
            "pvc": "smollm2-pvc",
            "conditions": [{"type": "Ready", "status": str(state == "Ready"), "reason": "Downloading"}],
        },
    }


def test_a_service_waits_for_a_cache_that_is_missing_filling_or_failed() -> None:
    hub = {"hf": {"endpoint": "http://h"}}
    assert cache_mount("team-a", "smollm2", None)[1] == Failure(
        "NIMCacheNotFound",
        "NIMCache team-a/smollm2 does not exist: create it, or change spec.storage.nimCache.name",
    )
    mount, waiting = cache_mount("team-a", "smollm2", _cache_body("InProgress", hub))
    assert mount is None
    assert waiting is not None
    assert waiting.reason == "WaitingForNIMCache"
    assert "Downloading" in waiting.message
    _, failed = cache_mount("team-a", "smollm2", _cache_body("Failed", hub))
    assert failed is not None
    assert failed.reason == "NIMCacheFailed"


def test_a_ready_hub_cache_is_mounted_read_only_and_served_from_its_folder() -> None:
    mount, waiting = cache_mount("team-a", "smollm2", _cache_body("Ready", {"hf": {"endpoint": "http://h"}}))
    assert waiting is None
    assert mount is not None
    spec = NIMServiceSpec.model_validate(
        {"image": {"repository": "localhost/nim-runtime", "tag": "dev"}, "storage": {"nimCache": {"name": "smollm2"}}}
    )
    deployment = render_deployment(Owner("svc", "team-a", "u"), spec, Placement(profile=None), mount)
    pod = deployment["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "model-store")
    assert volume["persistentVolumeClaim"]["claimName"] == "smollm2-pvc"
    store = next(m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == c.MODEL_STORE)
    assert store["readOnly"] is True
    assert store["subPath"] == "models"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env[c.ENV_MODEL_PATH] == c.MODEL_STORE


def test_a_catalog_cache_leaves_the_model_to_the_runtime() -> None:
    mount, _ = cache_mount("team-a", "c", _cache_body("Ready", {"catalog": {"model": "x"}}))
    assert mount is not None
    assert mount.model_path is None


def test_after_a_restart_the_downloaders_reason_is_kept_until_the_pods_are_seen() -> None:
    said = '{"reason": "NotFound", "message": "model acme/nope at http://hub does not exist"}'
    before = _status(_job("Failed"), [_pod("Failed", message=said)])
    job = _job("Failed")
    job["status"]["conditions"][0]["reason"] = "PodFailurePolicy"
    after = compute_cache_status(
        generation=2, previous=before, pvc_name="smollm2-pvc", pvc=PVC, job=job, pods=[], failure=None, now="later"
    )
    assert after == before
