"""NIMCache and the NIMServices on it, through the real operator process and the real API server.

kwok runs the pods here and its job stage reports every Job pod Succeeded without running anything: the
faithful test of "never a faked Ready". What happens inside a download pod is tested on the real nodes
(tests/e2e/test_nimcache_on_real_nodes.py); this cluster has no storage provisioner, so claims bind only
to volumes a test makes.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from nim_operator import constants as c
from nim_operator.kube import Kube
from nim_operator.left_behind import LeftBehindFinder, service_claim_selector
from tests.conftest import REPO, Cluster
from tests.operator.conftest import NIM, wait_for

pytestmark = pytest.mark.cluster

SAMPLES = REPO.parent / "shared" / "compat" / "nvidia-samples"
SMOL = {"image": {"repository": "nim-runtime", "tag": "dev"}, "model": {"name": "HuggingFaceTB/SmolLM2-135M-Instruct"}}
HUB = {
    "hf": {"endpoint": "http://hub.invalid:8090", "namespace": "HuggingFaceTB", "modelName": "SmolLM2-135M-Instruct"}
}


class Caches:
    def __init__(self, nim: NIM) -> None:
        self.nim = nim

    def create(self, name: str, spec: dict[str, Any]) -> None:
        body = {"apiVersion": c.API_VERSION, "kind": c.CACHE_KIND, "metadata": {"name": name}, "spec": spec}
        self.nim.custom.create_namespaced_custom_object(c.GROUP, c.VERSION, self.nim.namespace, c.CACHE_PLURAL, body)

    def patch(self, name: str, patch: dict[str, Any]) -> None:
        self.nim.custom.patch_namespaced_custom_object(
            c.GROUP, c.VERSION, self.nim.namespace, c.CACHE_PLURAL, name, patch
        )

    def get(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.nim.custom.get_namespaced_custom_object(
            c.GROUP, c.VERSION, self.nim.namespace, c.CACHE_PLURAL, name
        )
        return found

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.get(name).get("status") or {}
        return status


@pytest.fixture
def caches(nim: NIM) -> Iterator[Caches]:
    """NIMCaches of the test's namespace, deleted (with their Jobs) before the namespace is: a terminating
    namespace refuses the Jobs and claims their reconciles would re-create, and the retries would keep the
    shared operator's workers busy for the next tests."""
    yield Caches(nim)
    nim.custom.delete_collection_namespaced_custom_object(c.GROUP, c.VERSION, nim.namespace, c.CACHE_PLURAL)
    wait_for(
        lambda: (
            not nim.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, nim.namespace, c.CACHE_PLURAL)["items"]
        ),
        what="the test's NIMCaches to go",
    )


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((x for x in status.get("conditions") or [] if x["type"] == type_), {})


def _bound_claim(cluster: Cluster, namespace: str, name: str) -> None:
    """A claim bound to a volume made for it: this cluster has no provisioner (kwok never mounts it)."""
    core = client.CoreV1Api(cluster.api)
    core.create_persistent_volume(
        {
            "metadata": {"name": f"{namespace}-{name}"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "manual",
                "hostPath": {"path": f"/tmp/{namespace}-{name}"},
                "claimRef": {"namespace": namespace, "name": name},
                "persistentVolumeReclaimPolicy": "Delete",
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": name},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "manual",
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    wait_for(
        lambda: core.read_namespaced_persistent_volume_claim(name, namespace).status.phase == "Bound",
        what=f"claim {name} to bind",
    )


def _job_pods(nim: NIM, cache: str) -> list[client.V1Pod]:
    return list(nim.core.list_namespaced_pod(nim.namespace, label_selector=f"{c.LABEL_NIMCACHE}={cache}").items)


def test_a_job_that_kwok_reports_succeeded_is_not_a_ready_cache(cluster: Cluster, nim: NIM, caches: Caches) -> None:
    _bound_claim(cluster, nim.namespace, "weights")
    caches.create("faked", {"source": HUB, "storage": {"pvc": {"name": "weights"}}})
    status = wait_for(lambda: (s := caches.status("faked")).get("state") == "Failed" and s, timeout=90, what="Failed")
    failed = _condition(status, "Failed")
    assert failed["reason"] == "NoCompletionReport", status
    [pod] = _job_pods(nim, "faked")
    assert pod.status.phase == "Succeeded"  # what kwok made of it: the Job controller calls the Job complete
    assert f"on node {pod.spec.node_name}" in failed["message"]
    assert "delete Job faked-job" in failed["message"]
    assert _condition(status, "Ready")["status"] == "False"
    # A service on it waits and says why; nothing is deployed on a cache that was never filled.
    nim.create("on-faked", {**SMOL, "storage": {"nimCache": {"name": "faked"}}})
    waiting = wait_for(
        lambda: (s := nim.status("on-faked")).get("conditions") and _condition(s, "Ready").get("reason") and s,
        what="the service's status",
    )
    assert _condition(waiting, "Ready")["reason"] == "NIMCacheFailed", waiting
    assert "NoCompletionReport" in _condition(waiting, "Ready")["message"]
    assert nim.deployment("on-faked") is None
    # No retry loop: the Job is done and stays one pod.
    time.sleep(3)
    assert len(_job_pods(nim, "faked")) == 1
    assert caches.status("faked")["state"] == "Failed"


def _samples() -> list[dict[str, Any]]:
    found = []
    for path in sorted(SAMPLES.rglob("*.yaml")):
        found += [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "NIMCache"]
    return found


def _secrets(core: client.CoreV1Api, namespace: str, *names: str) -> None:
    for name in names:
        core.create_namespaced_secret(
            namespace,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name=name),
                data={k: base64.b64encode(b"not-a-key").decode() for k in ("NGC_API_KEY", "HF_TOKEN")},
            ),
        )


@pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"NVIDIA's samples are not at {SAMPLES}")
def test_nvidia_sample_caches_are_never_ready_here_and_say_why(
    nim: NIM, caches: Caches, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each of the 33 sample NIMCaches (apiVersion ours, renamed apart, in one namespace) created for real."""
    _secrets(nim.core, nim.namespace, "ngc-secret", "ngc-api-secret", "hf-api-secret")
    names = []
    for i, doc in enumerate(_samples()):
        name = f"s{i:02d}-{doc['metadata']['name']}"[:60].rstrip("-")
        caches.create(name, doc["spec"])
        names.append(name)
    assert len(names) >= 30

    def settled() -> dict[str, dict[str, Any]] | None:
        found = {n: caches.status(n) for n in names}
        return (
            found
            # DiscoveringManifest: an NGC source's puller image is being asked for its manifest (a probe Job).
            if all(
                _condition(s, "Ready").get("reason") not in (None, "JobPending", "DiscoveringManifest")
                for s in found.values()
            )
            else None
        )

    statuses = wait_for(settled, timeout=180, what="every sample cache to report why it is not Ready")
    time.sleep(3)  # a crash loop would show up as more pods by now
    rows = []
    for name in names:
        status = caches.status(name)
        ready = _condition(status, "Ready")
        rows.append(f"{name:50} {status.get('state'):10} {ready.get('reason')}: {ready.get('message', '')[:110]}")
        assert status.get("state") != "Ready", (name, status)
        assert ready.get("message"), (name, status)
        assert len(_job_pods(nim, name)) <= 1, name
    with capsys.disabled():
        print("\nNVIDIA's sample NIMCaches on the light cluster (kwok nodes, no storage provisioner):")
        print("\n".join(rows))
    # An NGC source without model.profiles first needs its puller image's manifest (cache_profiles), which a
    # probe Job of an nvcr.io image cannot print here: a failure naming the fix. Every other cache waits for
    # its claim: without a default StorageClass nothing binds it, and the missing piece is named.
    specs = dict(zip(names, (doc["spec"] for doc in _samples()), strict=True))
    default_class = next(
        (
            sc.metadata.name
            for sc in client.StorageV1Api(nim.api).list_storage_class().items
            if (sc.metadata.annotations or {}).get("storageclass.kubernetes.io/is-default-class") == "true"
        ),
        None,
    )
    unbound = 0
    for name, status in statuses.items():
        ready = _condition(status, "Ready")
        ngc = specs[name]["source"].get("ngc") or {}
        if ready["reason"] == "ManifestUnavailable":
            assert ngc, (name, ready)
            assert not (ngc.get("model") or {}).get("profiles"), (name, ready)
            assert "spec.source.ngc.model.profiles" in ready["message"], (name, ready)
            continue
        unbound += 1
        assert ready["reason"] == "PVCNotBound", (name, ready)
        if default_class is None:  # the light cluster: nothing can ever bind the claim
            assert "names no storage class (the cluster's default StorageClass" in ready["message"], (name, ready)
            assert "unbound immediate PersistentVolumeClaims" in ready["message"], (name, ready)  # the scheduler's
        else:  # the full cluster: local-path binds only once a pod is on a real node, and these run on kwok's
            assert f"storage class {default_class} has not provided a volume yet" in ready["message"], (name, ready)
    assert unbound >= 10, unbound


def test_renamed_claims_and_services_are_reported_not_deleted(nim: NIM) -> None:
    spec = {
        **SMOL,
        "storage": {"pvc": {"create": True, "name": "models-a", "size": "1Gi"}},
        "expose": {"service": {"name": "chat-a"}},
    }
    nim.create("renamed", spec)
    wait_for(lambda: nim.deployment("renamed") is not None, what="the Deployment")
    generation = nim.get("renamed")["metadata"]["generation"]
    nim.patch(
        "renamed", {"spec": {"storage": {"pvc": {"name": "models-b"}}, "expose": {"service": {"name": "chat-b"}}}}
    )

    def reported() -> dict[str, Any] | None:
        status = nim.status("renamed")
        return status if status.get("observedGeneration", 0) > generation and _condition(status, "LeftBehind") else None

    status = wait_for(reported, what="the LeftBehind condition")
    left = _condition(status, "LeftBehind")
    assert left["status"] == "True"
    assert left["reason"] == "OldClaimAndService"
    assert f"kubectl delete pvc -n {nim.namespace} models-a" in left["message"]
    assert "Service chat-a still routes to this NIMService's pods" in left["message"]
    # Both are still there: the claim holds weights; the Service may still have clients.
    assert nim.core.read_namespaced_persistent_volume_claim("models-a", nim.namespace).metadata.name == "models-a"
    assert nim.core.read_namespaced_service("chat-a", nim.namespace).spec.selector["app.kubernetes.io/instance"] == (
        "renamed"
    )
    wait_for(lambda: _service(nim, "chat-b"), what="the new Service")


def _service(nim: NIM, name: str) -> bool:
    try:
        nim.core.read_namespaced_service(name, nim.namespace)
    except client.ApiException as err:
        if err.status == 404:
            return False
        raise
    return True


def test_a_renamed_nimcache_claim_is_reported(nim: NIM, caches: Caches) -> None:
    caches.create("moved", {"source": HUB, "storage": {"pvc": {"create": True, "name": "cache-a", "size": "1Gi"}}})
    wait_for(lambda: caches.status("moved").get("pvc") == "cache-a", what="the first claim")
    caches.patch("moved", {"spec": {"storage": {"pvc": {"name": "cache-b"}}}})

    def reported() -> dict[str, Any] | None:
        status = caches.status("moved")
        return status if status.get("pvc") == "cache-b" and _condition(status, "LeftBehind") else None

    status = wait_for(reported, what="the cache's LeftBehind condition")
    left = _condition(status, "LeftBehind")
    assert left["reason"] == "OldClaim"
    assert f"kubectl delete pvc -n {nim.namespace} cache-a" in left["message"]
    claim = nim.core.read_namespaced_persistent_volume_claim("cache-a", nim.namespace)
    assert claim.metadata.deletion_timestamp is None


def test_the_finder_sees_deleted_leftovers_go(cluster: Cluster, namespace: str) -> None:
    """The LIST behind LeftBehind, on the real API server: labelled, in use, and deleted claims."""
    core = client.CoreV1Api(cluster.api)
    labels = {c.LABEL_MANAGED_BY: c.MANAGED_BY, c.LABEL_NAME: "svc", c.LABEL_INSTANCE: "svc"}
    for name, extra in (("old", {}), ("current", {}), ("cache-claim", {c.LABEL_NIMCACHE: "svc"})):
        core.create_namespaced_persistent_volume_claim(
            namespace,
            {
                "metadata": {"name": name, "labels": {**labels, **extra}},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            },
        )
    finder = LeftBehindFinder(Kube(cluster.api), recheck_s=0)

    def find(generation: int) -> tuple[str, ...]:
        return finder.find(
            owner_uid="u",
            generation=generation,
            api_version="v1",
            kind="PersistentVolumeClaim",
            namespace=namespace,
            selector=service_claim_selector("svc"),
            in_use={"current"},
        )

    assert find(1) == ("old",)  # the NIMCache's claim of the same instance name is not the service's
    core.delete_namespaced_persistent_volume_claim("old", namespace)
    wait_for(lambda: find(1) == (), what="the deleted claim to stop being reported")


def test_replicas_on_a_read_write_once_claim_are_told_they_share_a_node(nim: NIM) -> None:
    nim.create("crowded", {**SMOL, "replicas": 3, "storage": {"pvc": {"create": True, "size": "1Gi"}}})
    nim.create(
        "spread",
        {
            **SMOL,
            "replicas": 3,
            "storage": {"pvc": {"create": True, "size": "1Gi", "volumeAccessMode": "ReadWriteMany"}},
        },
    )
    for name, ok, mode in (("crowded", "False", "ReadWriteOnce"), ("spread", "True", "ReadWriteMany")):
        status = wait_for(lambda n=name: _condition(nim.status(n), "StorageSharedAcrossNodes"), what=name)
        assert (status["status"], status["reason"]) == (ok, mode), json.dumps(status)
    crowded = _condition(nim.status("crowded"), "StorageSharedAcrossNodes")
    assert "the 3 replicas can only run on that node" in crowded["message"]
