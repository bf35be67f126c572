"""The manifest probe on the real nodes, run by the chart's operator with the chart's permissions.

NVIDIA's images cannot be pulled here, so two images stand in, each asked exactly as a NIM is:
``localhost/nim-manifest-fixture:dev`` (our Debian base with a NIM-format manifest at NIM's path, see
tests/e2e/nim-image) and our runtime image tagged under a name the operator does not recognise (a
registry mirror's copy), which answers with its catalog. NIM_MODEL_PROFILE then holds only ids the
image listed; an image that cannot be pulled ends with a condition naming why, not a wait.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from nim_operator.manifest_probe import LABEL_PROBE, key_hash, object_name
from nim_operator.render.cache import PULLER
from tests.conftest import Cluster
from tests.e2e.conftest import (
    GROUP,
    MODEL,
    RUNTIME_IMAGE,
    RUNTIME_NODE,
    TOLERATE_REAL,
    VERSION,
    Release,
    apply,
    condition,
    nimservice,
    read,
    wait_ready,
)
from tests.operator.conftest import wait_for
from tests.unit.nim_manifests import IDS

pytestmark = pytest.mark.cluster

FIXTURE = "localhost/nim-manifest-fixture:dev"
MIRROR = "localhost/serving-mirror:dev"
ON_RUNTIME_NODE: dict[str, Any] = {
    "nodeSelector": {"kubernetes.io/hostname": RUNTIME_NODE},
    "tolerations": TOLERATE_REAL,
}
#: The probe pulls nothing here (the images are in the node already): start, print, be read.
PROBE_TIMEOUT_S = 120


def _nim_image(name: str, image: str, **spec: Any) -> dict[str, Any]:
    repository, tag = image.rsplit(":", 1)
    body = nimservice(name, image={"repository": repository, "tag": tag, "pullPolicy": "Never"}, **ON_RUNTIME_NODE)
    for ours in ("model", "profile"):
        body["spec"].pop(ours, None)
    body["spec"].update(spec)
    return body


def _decided(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    """The status once the profile decision of the current generation is in (the probe answered)."""

    def done() -> dict[str, Any] | None:
        obj = read(cluster, namespace, name)
        status = obj.get("status") or {}
        if status.get("observedGeneration") != obj["metadata"]["generation"]:
            return None
        ready = condition(obj, "Ready")
        return None if ready.get("reason") == "DiscoveringManifest" else status

    return wait_for(done, timeout=PROBE_TIMEOUT_S, what=f"{name}'s manifest probe to answer")


def _env(cluster: Cluster, namespace: str, name: str) -> dict[str, str]:
    deployment = client.AppsV1Api(cluster.api).read_namespaced_deployment(name, namespace)
    return {e.name: e.value for e in deployment.spec.template.spec.containers[0].env if e.value is not None}


def _probe_pods_created(cluster: Cluster, namespace: str, image: str) -> int:
    events = client.CoreV1Api(cluster.api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={object_name(image)},reason=SuccessfulCreate"
    )
    return len(events.items)


def test_a_nim_image_is_asked_once_and_only_its_ids_are_injected(cluster: Cluster, release: Release) -> None:
    ns = release.namespace
    started = time.monotonic()
    apply(cluster, ns, _nim_image("nim-a", FIXTURE))
    status = _decided(cluster, ns, "nim-a")
    first_seconds = time.monotonic() - started
    profile = status["profile"]
    # The kwok pools' H100 nodes make the image's own H100 TensorRT-LLM fp8 engine the choice.
    assert profile["id"] == IDS["trt-h100-fp8-tp1"], profile
    assert profile["name"] == "tensorrt_llm-h100-fp8-tp1-pp1-throughput"
    assert _env(cluster, ns, "nim-a")["NIM_MODEL_PROFILE"] == IDS["trt-h100-fp8-tp1"]
    kept = client.CoreV1Api(cluster.api).read_namespaced_config_map(object_name(FIXTURE), ns)
    assert kept.data["kind"] == "nim"
    assert kept.data["key"] == FIXTURE
    jobs = client.BatchV1Api(cluster.api)
    selector = f"{LABEL_PROBE}={key_hash(FIXTURE)}"
    wait_for(lambda: not jobs.list_namespaced_job(ns, label_selector=selector).items, what="the probe Job to go")
    # A second service of the image: decided from memory, no second probe.
    started = time.monotonic()
    apply(cluster, ns, _nim_image("nim-b", FIXTURE, profileSelector={"gpus": [{"product": "NVIDIA-L40S"}]}))
    second = _decided(cluster, ns, "nim-b")
    second_seconds = time.monotonic() - started
    assert second["profile"]["id"] == IDS["trt-l40s-fp8-tp1"]
    assert _probe_pods_created(cluster, ns, FIXTURE) == 1
    print(
        f"\nmanifest probe of {FIXTURE} on {RUNTIME_NODE}: first decision {first_seconds:.1f} s "
        f"(the probe itself {kept.data.get('seconds')} s), second {second_seconds:.1f} s"
    )


@pytest.fixture
def mirror() -> Iterator[str]:
    """Our runtime image under another name in real-0's containerd, as a registry mirror would hold it."""
    from tests.conftest import REPO

    sock = REPO / ".cache" / "cluster" / "nodes" / RUNTIME_NODE / "containerd.sock"
    ctr = ["ctr", "--address", str(sock), "-n", "k8s.io", "images"]
    subprocess.run([*ctr, "tag", "--force", RUNTIME_IMAGE, MIRROR], check=True, capture_output=True, timeout=60)
    try:
        yield MIRROR
    finally:
        subprocess.run([*ctr, "rm", MIRROR], check=False, capture_output=True, timeout=60)


def test_our_runtime_under_another_name_answers_with_its_catalog(
    cluster: Cluster, release: Release, mirror: str
) -> None:
    ns = release.namespace
    started = time.monotonic()
    # The CPU profile, pinned: the real node has no GPU. A pin is checked against the image's own listing.
    apply(cluster, ns, _nim_image("mirrored", mirror, model={"name": MODEL}, profile="vllm-cpu-bf16"))
    status = _decided(cluster, ns, "mirrored")
    decided = time.monotonic() - started
    assert status["profile"]["id"] == "vllm-cpu-bf16", status["profile"]
    assert _env(cluster, ns, "mirrored")["NIM_MODEL_PROFILE"] == "vllm-cpu-bf16"
    kept = client.CoreV1Api(cluster.api).read_namespaced_config_map(object_name(mirror), ns)
    assert kept.data["kind"] == "runtime"
    # The runtime accepts the id it listed, and serves.
    seconds = wait_ready(cluster, ns, "mirrored")
    print(f"\n{mirror}: probed and decided in {decided:.1f} s, Ready {seconds:.0f} s later")


def test_an_image_that_cannot_be_pulled_ends_with_a_clear_condition(cluster: Cluster, release: Release) -> None:
    ns = release.namespace
    started = time.monotonic()
    apply(cluster, ns, _nim_image("missing", "localhost/no-such-image:dev"))
    status = _decided(cluster, ns, "missing")
    assert "the manifest of localhost/no-such-image:dev is unknown (ErrImageNeverPull" in status["profile"]["reason"]

    def said() -> dict[str, Any] | None:
        ready = condition(read(cluster, ns, "missing"), "Ready")
        return ready if ready.get("reason") == "ErrImageNeverPull" else None

    ready = wait_for(said, timeout=PROBE_TIMEOUT_S, what="the pods' pull failure in the Ready condition")
    assert "localhost/no-such-image:dev" in ready["message"]
    print(f"\nunpullable image: the condition names it after {time.monotonic() - started:.1f} s")


def test_an_ngc_cache_fetches_what_placement_would_run(cluster: Cluster, release: Release) -> None:
    ns = release.namespace
    core = client.CoreV1Api(cluster.api)
    core.create_namespaced_secret(
        ns, client.V1Secret(metadata=client.V1ObjectMeta(name="ngc-api"), string_data={"NGC_API_KEY": "not-a-key"})
    )
    cache = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "NIMCache",
        "metadata": {"name": "ngc"},
        "spec": {
            "source": {"ngc": {"modelPuller": FIXTURE, "authSecret": "ngc-api", "model": {"engine": "tensorrt"}}},
            "storage": {"pvc": {"create": True, "size": "1Gi", "volumeAccessMode": "ReadWriteOnce"}},
            **ON_RUNTIME_NODE,
        },
    }
    apply(cluster, ns, cache)
    custom = client.CustomObjectsApi(cluster.api)

    def chosen() -> list[dict[str, Any]] | None:
        status = custom.get_namespaced_custom_object(GROUP, VERSION, ns, "nimcaches", "ngc").get("status") or {}
        return status.get("profiles") or None

    profiles = wait_for(chosen, timeout=PROBE_TIMEOUT_S, what="the NIMCache's profiles")
    # One TensorRT-LLM profile per GPU product of the kwok pools (the buildable one where no engine fits).
    by_id = {p["name"]: p["reason"] for p in profiles}
    assert set(by_id) == {IDS["trt-h100-fp8-tp1"], IDS["trt-l40s-fp8-tp1"], IDS["trt-buildable-bf16-tp1"]}, by_id
    assert "for NVIDIA-H100-80GB-HBM3" in by_id[IDS["trt-h100-fp8-tp1"]]
    job = client.BatchV1Api(cluster.api).read_namespaced_job("ngc-job", ns)
    # NVIDIA's puller runs as the init container; our downloader then seals what it wrote.
    command = next(c for c in job.spec.template.spec.init_containers if c.name == PULLER).command
    assert command[:2] == ["download-to-cache", "--profiles"]
    assert set(command[2:]) == set(by_id)
