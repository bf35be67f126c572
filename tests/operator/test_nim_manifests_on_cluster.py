"""NVIDIA's manifest formats on the real control plane: a NIMService given an NVIDIA image and that image's
manifest in a ConfigMap (NIM's schema, as NVIDIA's NIMCache keeps it under ``model_manifest.yaml``)
gets one of the manifest's own ids in NIM_MODEL_PROFILE, chosen by our placement against the kwok pools.

Images the operator must ask for their manifest (the probe Job) are tested for real on the real nodes
(tests/e2e/test_manifest_discovery.py); here, kwok runs the probe's pod but has no kubelet to give its
log, which shows the other path: the manifest stays unknown, no profile is injected, and status says so.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from nim_operator.manifest_probe import LABEL_PROBE, key_hash, object_name
from tests.operator.conftest import NIM, OperatorProcess
from tests.unit.nim_manifests import IDS, LLAMA_8B_V2, NVIDIA_MANIFESTS

pytestmark = pytest.mark.cluster

NVIDIA_IMAGE = {"repository": "nvcr.io/nim/meta/llama-3.1-8b-instruct", "tag": "1.8.0"}


def _config_map(nim: NIM, name: str, text: str, key: str = "model_manifest.yaml") -> None:
    nim.core.create_namespaced_config_map(
        nim.namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data={key: text})
    )


def _env(nim: NIM, name: str) -> dict[str, str | None]:
    deployment = nim.deployment(name)
    assert deployment is not None
    return {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}


def _node_product(nim: NIM, name: str) -> str:
    pods = nim.core.list_namespaced_pod(nim.namespace, label_selector=f"app.kubernetes.io/name={name}").items
    assert len(pods) == 1
    labels: dict[str, str] = nim.core.read_node(pods[0].spec.node_name).metadata.labels
    return labels["nvidia.com/gpu.product"]


def test_an_nvidia_manifest_puts_the_images_own_id_in_nim_model_profile(nim: NIM) -> None:
    _config_map(nim, "llama-manifest", LLAMA_8B_V2)
    nim.create("llama", {"image": NVIDIA_IMAGE, "modelManifest": "llama-manifest"})
    status = nim.wait_state("llama", "Ready")
    profile = status["profile"]
    assert profile["id"] == IDS["trt-h100-fp8-tp1"]
    assert profile["name"] == "tensorrt_llm-h100-fp8-tp1-pp1-throughput"
    # The image's own tags, as its manifest states them.
    assert profile["tags"]["gpu_device"] == "2330:10de"
    assert profile["tags"]["llm_engine"] == "tensorrt_llm"
    rejected = {r["id"]: r["why"] for r in profile["rejected"]}
    assert rejected[IDS["trt-h100-fp3-tp1"]] == "not considered: precision 'fp3' is not one the operator can rank"
    assert "not H100_NVL" in rejected[IDS["trt-h100nvl-fp8-tp1"]]
    env = _env(nim, "llama")
    assert env["NIM_MODEL_PROFILE"] == IDS["trt-h100-fp8-tp1"]
    # The image serves the name it knows: no served name of ours is imposed on it.
    assert "NIM_SERVED_MODEL_NAME" not in env
    assert _node_product(nim, "llama") == "NVIDIA-H100-80GB-HBM3"


def test_selectors_and_readable_names_choose_among_the_images_ids(nim: NIM) -> None:
    _config_map(nim, "llama-manifest", LLAMA_8B_V2)
    base: dict[str, Any] = {"image": NVIDIA_IMAGE, "modelManifest": "llama-manifest"}
    nim.create("on-l40s", {**base, "profileSelector": {"gpus": [{"product": "NVIDIA-L40S"}]}})
    nim.create("latency", {**base, "profileSelector": {"qosProfile": "latency"}})
    nim.create("pinned", {**base, "profile": "vllm-bf16-tp1-pp1-lora"})
    assert nim.wait_state("on-l40s", "Ready")["profile"]["id"] == IDS["trt-l40s-fp8-tp1"]
    assert _node_product(nim, "on-l40s") == "NVIDIA-L40S"
    latency = nim.wait_state("latency", "Ready")
    assert latency["profile"]["id"] == IDS["trt-h100-fp8-tp2-latency"]
    assert latency["profile"]["gpuCount"] == 2
    assert _env(nim, "pinned")["NIM_MODEL_PROFILE"] == IDS["vllm-bf16-tp1-lora"]
    nim.wait_state("pinned", "Ready")


def test_nvidias_own_example_that_no_node_fits_fails_naming_the_profile(nim: NIM) -> None:
    _config_map(nim, "trtllm", (NVIDIA_MANIFESTS / "manifest_trtllm_v1.yaml").read_text())
    nim.create(
        "big",
        {"image": {"repository": "nvcr.io/nim/meta/llama3-70b-instruct", "tag": "1.0.0"}, "modelManifest": "trtllm"},
    )
    status = nim.wait_state("big", "Failed")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "NoProfileFits"
    assert (
        "(tensorrt_llm-l40s-fp16-tp8-pp1-throughput): no node can run it: NVIDIA-L40S has 4 GPU(s), needs 8"
        in failed["message"]
    )
    assert nim.deployment("big") is None


def test_a_config_map_that_is_no_manifest_fails_naming_both_formats(nim: NIM) -> None:
    _config_map(nim, "junk", "- just\n- a list\n")
    nim.create("junk", {"image": NVIDIA_IMAGE, "modelManifest": "junk"})
    status = nim.wait_state("junk", "Failed")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidManifest"
    assert "ConfigMap" in failed["message"]
    assert "NIM's (a v1 map of profile ids" in failed["message"]


def test_an_image_that_cannot_be_asked_is_deployed_without_a_profile_and_probed_once(
    nim: NIM, operator_process: OperatorProcess
) -> None:
    image = {"repository": "nvcr.io/nim/acme/probe-me", "tag": "2"}
    nim.create("first", {"image": image})
    status = nim.wait_state("first", "Ready")
    assert "the manifest of nvcr.io/nim/acme/probe-me:2 is unknown (ManifestUnreadable" in status["profile"]["reason"]
    assert "NIM_MODEL_PROFILE" not in _env(nim, "first")
    jobs = client.BatchV1Api(nim.api)
    selector = f"{LABEL_PROBE}={key_hash('nvcr.io/nim/acme/probe-me:2')}"
    # The ended Job stays as the record of the failure (the Job controller removes it after its TTL).
    kept = jobs.list_namespaced_job(nim.namespace, label_selector=selector).items
    assert [j.status.succeeded for j in kept] == [1]
    assert kept[0].spec.ttl_seconds_after_finished > 0
    # A second service of the same image takes the remembered answer, and so does a third after an
    # operator restart: Ready, and the Job controller created the probe's pod once in all.
    nim.create("second", {"image": image})
    second = nim.wait_state("second", "Ready")
    assert second["profile"]["reason"] == status["profile"]["reason"]
    operator_process.stop()
    operator_process.start()
    nim.create("third", {"image": image})
    third = nim.wait_state("third", "Ready")
    assert third["profile"]["reason"] == status["profile"]["reason"]
    assert [j.metadata.uid for j in jobs.list_namespaced_job(nim.namespace, label_selector=selector).items] == [
        kept[0].metadata.uid
    ]
    job = object_name("nvcr.io/nim/acme/probe-me:2")
    events = nim.core.list_namespaced_event(nim.namespace, field_selector=f"involvedObject.name={job}").items
    assert [e.reason for e in events if e.reason == "SuccessfulCreate"] == ["SuccessfulCreate"]


def test_plan_takes_an_nvidia_manifest_file(nim: NIM, operator_process: OperatorProcess, tmp_path: Path) -> None:
    """`nim-operator plan` cannot run the probe: given the image's manifest file, it shows the decision."""
    service = tmp_path / "llama.yaml"
    service.write_text(
        yaml.safe_dump({"kind": "NIMService", "metadata": {"name": "llama"}, "spec": {"image": NVIDIA_IMAGE}})
    )
    manifest = tmp_path / "model_manifest.yaml"
    manifest.write_text(LLAMA_8B_V2)
    env = {**os.environ, "KUBECONFIG": str(operator_process.kubeconfig)}
    plan = [sys.executable, "-m", "nim_operator", "plan", "-f", str(service)]
    asked = subprocess.run(plan, capture_output=True, text=True, timeout=60, check=True, env=env)
    assert "reads the manifest of nvcr.io/nim/meta/llama-3.1-8b-instruct:1.8.0 from the image itself" in asked.stdout
    given = subprocess.run(
        [*plan, "--manifest", str(manifest)], capture_output=True, text=True, timeout=60, check=True, env=env
    )
    assert f"profile: {IDS['trt-h100-fp8-tp1']} (tensorrt_llm-h100-fp8-tp1-pp1-throughput)" in given.stdout
