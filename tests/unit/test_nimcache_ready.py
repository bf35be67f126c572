"""A NIMCache is Ready only on the downloader's own completion report, never on a Job's word alone.

The runtime half of the contract (``nim-runtime download``) writes the report; the operator half
(``cache_status``) reads it. These tests run the real downloader's ``--seal`` and feed its termination
message to the operator's reader, so the two halves cannot drift apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nim_operator.api.nimcache import NIMCacheSpec, NIMCacheStatus
from nim_operator.cache_status import cached_profiles, completion_report, compute_cache_status
from nim_runtime import download
from nim_runtime.profiles import find_manifest

NOW = "2026-12-03T08:00:00Z"
PVC = {"metadata": {"name": "c-pvc"}, "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"]}}


def _job(*conditions: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "c-job", "uid": "job-uid"},
        "status": {"conditions": [{"type": t, "status": "True", "reason": f"{t}Reason"} for t in conditions]},
    }


def _terminated(name: str, code: int, message: str = "", reason: str = "") -> dict[str, Any]:
    state = {
        "terminated": {"exitCode": code, "message": message, "reason": reason or ("Completed" if not code else "Error")}
    }
    return {"name": name, "image": "i:1", "state": state}


def _pod(
    phase: str, *containers: dict[str, Any], init: tuple[dict[str, Any], ...] = (), node: str = "real-0"
) -> dict[str, Any]:
    return {
        "metadata": {"name": f"c-job-{phase.lower()}", "creationTimestamp": "2026-12-03T07:00:00Z", "uid": "pod-uid"},
        "spec": {"nodeName": node},
        "status": {"phase": phase, "initContainerStatuses": list(init), "containerStatuses": list(containers)},
    }


def _status(
    job: dict[str, Any] | None, pods: list[dict[str, Any]], previous: NIMCacheStatus | None = None
) -> NIMCacheStatus:
    return compute_cache_status(
        generation=1, previous=previous, pvc_name="c-pvc", pvc=PVC, job=job, pods=pods, failure=None, now=NOW
    )


def _condition(status: NIMCacheStatus, type_: str) -> Any:
    return next(c for c in status.conditions if c.type == type_)


def test_a_job_that_succeeded_without_the_downloaders_report_is_not_ready(tmp_path: Path) -> None:
    # What kwok's job stage leaves: the pod Succeeded, its container exited 0, no termination message.
    faked = _pod("Succeeded", _terminated("download", 0), node="kwok-cpu-0")
    status = _status(_job("Complete"), [faked])
    assert status.state == "Failed"
    failed = _condition(status, "Failed")
    assert failed.reason == "NoCompletionReport"
    assert "c-job-succeeded on node kwok-cpu-0" in failed.message
    assert "delete Job c-job" in failed.message
    assert _condition(status, "Ready").status == "False"
    assert status.progress is None
    assert status.size is None


def test_an_exit_0_with_a_failure_or_a_progress_line_is_no_report() -> None:
    progress = json.dumps({"progress": {"files": 1, "totalFiles": 2, "bytes": 5, "totalBytes": 9}})
    assert completion_report(_pod("Succeeded", _terminated("download", 0, progress))) is None
    said = json.dumps({"reason": "NotFound", "message": "no"})
    assert completion_report(_pod("Succeeded", _terminated("download", 0, said))) is None
    done = json.dumps({"reason": "Downloaded", "files": 2, "bytes": 9})
    assert completion_report(_pod("Succeeded", _terminated("download", 0, done))) == json.loads(done)


def test_a_complete_job_whose_pod_is_not_seen_waits_and_a_ready_cache_stays_ready() -> None:
    waiting = _status(_job("Complete"), [])
    assert waiting.state == "Pending"
    assert _condition(waiting, "Ready").reason == "AwaitingReport"
    report = json.dumps({"reason": "Downloaded", "source": "hub/x", "files": 3, "bytes": 3 * 2**20})
    ready = _status(_job("Complete"), [_pod("Succeeded", _terminated("download", 0, report))])
    assert ready.state == "Ready"
    # The pod is gone (deleted, or not seen yet after a restart): the report was read, Ready stays, no write.
    assert _status(_job("Complete"), [], previous=ready) == ready


def test_ngc_puller_failure_names_the_container_and_its_last_lines() -> None:
    failed = _pod(
        "Failed",
        init=(_terminated("ngc-puller", 1, "fetching manifest\nERROR: 401 Unauthorized: invalid NGC_API_KEY"),),
    )
    retrying = _status(_job(), [failed])
    assert retrying.state == "InProgress"
    assert "container ngc-puller exited 1 (Error): fetching manifest ERROR: 401 Unauthorized" in _condition(
        retrying, "Ready"
    ).message.replace("\n", " ").replace(" | ", " ")
    given_up = _status(_job("Failed"), [failed])
    assert given_up.state == "Failed"
    assert _condition(given_up, "Failed").reason == "DownloadFailed"


def test_an_ngc_puller_image_that_cannot_be_pulled_fails_the_cache_naming_it() -> None:
    waiting = {
        "name": "ngc-puller",
        "image": "nvcr.io/nim/meta/llama-3.2-1b-instruct:1.12.0",
        "state": {
            "waiting": {
                "reason": "ImagePullBackOff",
                "message": 'Back-off pulling image "nvcr.io/nim/meta/llama-3.2-1b-instruct:1.12.0"',
            }
        },
    }
    pending = _pod(
        "Pending",
        {"name": "download", "image": "i:1", "state": {"waiting": {"reason": "PodInitializing"}}},
        init=(waiting,),
    )
    status = _status(_job(), [pending])
    assert status.state == "Failed"
    failed = _condition(status, "Failed")
    assert failed.reason == "ImagePullBackOff"
    assert "container ngc-puller" in failed.message
    assert "nvcr.io/nim/meta/llama-3.2-1b-instruct:1.12.0" in failed.message


def test_a_downloader_killed_mid_download_is_named_so() -> None:
    progress = json.dumps({"progress": {"files": 1, "totalFiles": 2, "bytes": 5, "totalBytes": 9}})
    killed = _pod("Failed", _terminated("download", 137, progress, reason="OOMKilled"))
    status = _status(_job("Failed"), [killed])
    assert _condition(status, "Failed").reason == "OOMKilled"
    assert "container download exited 137 (OOMKilled)" in _condition(status, "Failed").message


def test_the_real_seal_report_is_what_makes_a_cache_ready(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "ngc" / "hub").mkdir(parents=True)
    (store / "ngc" / "hub" / "weights.bin").write_bytes(b"x" * 4096)
    log = tmp_path / "termination-log"
    code = download.main(["--seal", "ngc:nvcr.io/nim/x:1", "--dest", str(store), "--termination-log", str(log)])
    assert code == 0
    marker = json.loads((store / download.MARKER).read_text())
    assert (marker["files"], marker["bytes"]) == (1, 4096)
    status = _status(_job("Complete"), [_pod("Succeeded", _terminated("download", 0, log.read_text()))])
    assert status.state == "Ready"
    assert status.size == "4.0 KiB"
    assert status.access_modes == ["ReadWriteOnce"]


def test_sealing_an_empty_store_fails_at_once_with_not_found(tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    code = download.main(["--seal", "ngc:nvcr.io/nim/x:1", "--dest", str(tmp_path), "--termination-log", str(log)])
    assert code == download.EXIT_NOT_FOUND
    assert code in download.PERMANENT_EXIT_CODES
    said = json.loads(log.read_text())
    assert said["reason"] == "NotFound"
    assert "spec.source.ngc.model" in said["message"]
    assert not (tmp_path / download.MARKER).exists()


def _spec(source: dict[str, Any]) -> NIMCacheSpec:
    return NIMCacheSpec.model_validate({"source": source, "storage": {"pvc": {"create": True, "size": "1Gi"}}})


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ({"hf": {"endpoint": "http://h", "namespace": "HuggingFaceTB", "modelName": "SmolLM2-135M-Instruct"}},
         ["vllm-bf16-tp1", "vllm-cpu-bf16"]),
        ({"catalog": {"model": "HuggingFaceTB/SmolLM2-135M-Instruct"}}, ["vllm-bf16-tp1", "vllm-cpu-bf16"]),
        # Found by the manifest's hf:// source, not its catalog name (meta/llama-3.1-8b-instruct).
        ({"hf": {"endpoint": "http://h", "namespace": "meta-llama", "modelName": "Llama-3.1-8B-Instruct"}},
         None),
        # An NGC source's profiles are chosen before its download (cache_profiles, test_cache_profiles).
        ({"ngc": {"authSecret": "a", "modelPuller": "nvcr.io/nim/x:1", "model": {"profiles": ["p1", "p2"]}}},
         []),
        ({"ngc": {"authSecret": "a", "modelPuller": "nvcr.io/nim/x:1"}}, []),
        ({"hf": {"endpoint": "http://h", "namespace": "acme", "modelName": "unknown"}}, []),
    ],
)  # fmt: skip
def test_the_profiles_a_filled_cache_holds(source: dict[str, Any], expected: list[str] | None) -> None:
    names = [p.name for p in cached_profiles(_spec(source))]
    llama = find_manifest("meta/llama-3.1-8b-instruct")
    assert llama is not None
    assert names == (expected if expected is not None else [p.id for p in llama.profiles])


def test_a_claim_nothing_binds_is_named_as_the_reason_the_download_waits() -> None:
    unscheduled = {
        "metadata": {"name": "c-job-x", "creationTimestamp": NOW},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/6 nodes are available: pod has unbound immediate PersistentVolumeClaims.",
                }
            ],
        },
    }
    pending = {"metadata": {"name": "c-pvc"}, "spec": {}, "status": {"phase": "Pending"}}
    status = compute_cache_status(
        generation=1,
        previous=None,
        pvc_name="c-pvc",
        pvc=pending,
        job=_job(),
        pods=[unscheduled],
        failure=None,
        now=NOW,
    )
    assert status.state == "Pending"
    ready = _condition(status, "Ready")
    assert ready.reason == "PVCNotBound"
    assert ready.message.startswith("PersistentVolumeClaim c-pvc is not bound: it names no storage class")
    assert "unbound immediate PersistentVolumeClaims" in ready.message
