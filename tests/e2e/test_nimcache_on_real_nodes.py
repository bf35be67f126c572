"""NIMCache on the real nodes: weights fetched once from a real hub, shared by NIMServices, kept.

The hub is olah (a PyPI package nobody here wrote) in a pod on ``real-1``, serving offline a git mirror
of the embedded SmolLM2 (tests/cluster/hub); the download Job runs the runtime image's ``nim-runtime
download`` (huggingface_hub's client) on ``real-0``, into a claim of the real local-path provisioner.
The operator is the chart's, as in test_nimservice_on_real_nodes (its own release for this module).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.conftest import Cluster
from tests.e2e.conftest import (
    GROUP,
    MODEL,
    RESTRICTED_CONTAINER,
    RESTRICTED_POD,
    RUNTIME_IMAGE,
    RUNTIME_NODE,
    TOLERATE_REAL,
    VERSION,
    Release,
    apply,
    condition,
    finished_pod_logs,
    kubectl,
    nimservice,
    pod,
    service_pods,
    wait_ready,
)
from tests.operator.conftest import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

HUB_IMAGE = "localhost/nim-hub:dev"
HUB_NODE = "real-1"
CACHES = "nimcaches"
FILL_TIMEOUT_S = 300


def nimcache(
    name: str, hub: str, *, model: str = "SmolLM2-135M-Instruct", size: str = "2Gi", **hf: Any
) -> dict[str, Any]:
    """An hf-source NIMCache as NVIDIA's sample writes one, its Job pinned to the runtime image's node."""
    source = {"endpoint": hub, "namespace": "HuggingFaceTB", "modelName": model, **hf}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "NIMCache",
        "metadata": {"name": name},
        "spec": {
            "source": {"hf": source},
            "storage": {"pvc": {"create": True, "storageClass": "", "size": size, "volumeAccessMode": "ReadWriteOnce"}},
            "nodeSelector": {"kubernetes.io/hostname": RUNTIME_NODE},
            "tolerations": TOLERATE_REAL,
        },
    }


def read_cache(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi(cluster.api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, CACHES, name
    )
    return obj


def cache_state(cluster: Cluster, namespace: str, name: str, *states: str) -> dict[str, Any] | None:
    obj = read_cache(cluster, namespace, name)
    status = obj.get("status") or {}
    current = status.get("observedGeneration") == obj["metadata"]["generation"]
    return obj if current and status.get("state") in states else None


def job_pods(cluster: Cluster, namespace: str, cache: str) -> list[client.V1Pod]:
    core = client.CoreV1Api(cluster.api)
    return list(core.list_namespaced_pod(namespace, label_selector=f"nimoperator.dev/nimcache={cache}").items)


@pytest.fixture(scope="module")
def hub(cluster: Cluster, release: Release) -> str:
    """olah in the module's namespace (it goes with it); its URL once the pod is ready."""
    core = client.CoreV1Api(cluster.api)
    server = pod(
        "hub",
        HUB_NODE,
        ["/opt/olah/bin/olah-cli", "--config", "/etc/olah.toml"],
        image=HUB_IMAGE,
        ports=[{"name": "http", "containerPort": 8090}],
        readinessProbe={"tcpSocket": {"port": 8090}, "periodSeconds": 1},
    )
    server["spec"]["restartPolicy"] = "Always"
    # olah writes its logs and repo cache under its working directory (/tmp): a writable root is simpler
    # than listing each folder, and this pod is test scaffolding, not something we ship.
    server["spec"]["containers"][0]["securityContext"] = {**RESTRICTED_CONTAINER, "readOnlyRootFilesystem": False}
    server["spec"]["securityContext"] = {**RESTRICTED_POD, "runAsUser": 1000, "runAsGroup": 1000}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "hub"},
        "spec": {"selector": {"app": "hub"}, "ports": [{"name": "http", "port": 8090, "targetPort": 8090}]},
    }
    apply(cluster, release.namespace, server, service)
    wait_for(
        lambda: any(
            c.type == "Ready" and c.status == "True"
            for c in core.read_namespaced_pod("hub", release.namespace).status.conditions or []
        ),
        timeout=120,
        what="the hub pod to be ready",
    )
    return f"http://hub.{release.namespace}.svc.cluster.local:8090"


def hub_downloads(cluster: Cluster, namespace: str) -> int:
    """How many times the hub served the weights file (olah logs every request it answers)."""
    log = kubectl(cluster, "-n", namespace, "logs", "hub")
    return len(re.findall(r"GET /HuggingFaceTB/SmolLM2-135M-Instruct/resolve/[^ ]+/model\.safetensors", log))


def test_a_cache_fills_once_and_two_services_share_it(cluster: Cluster, release: Release, hub: str) -> None:
    ns = release.namespace
    downloads_before = hub_downloads(cluster, ns)
    started = time.monotonic()
    apply(cluster, ns, nimcache("smollm2", hub))
    ready = wait_for(
        lambda: cache_state(cluster, ns, "smollm2", "Ready", "Failed"), timeout=FILL_TIMEOUT_S, what="the cache"
    )
    fill_s = time.monotonic() - started
    assert ready["status"]["state"] == "Ready", json.dumps(ready["status"], indent=1)
    assert ready["status"]["pvc"] == "smollm2-pvc"
    assert ready["status"]["size"], ready["status"]
    assert ready["status"]["progress"]["files"] >= 3, ready["status"]  # config, weights, tokenizer
    assert hub_downloads(cluster, ns) == downloads_before + 1

    # The download ran as the Job's one pod, non-root, on the node asked for, and no GPU was involved.
    [worker] = job_pods(cluster, ns, "smollm2")
    assert worker.status.phase == "Succeeded"
    assert worker.spec.node_name == RUNTIME_NODE
    assert worker.spec.security_context.run_as_non_root is True
    assert worker.spec.containers[0].image == RUNTIME_IMAGE
    assert "nvidia.com/gpu" not in str(worker.spec.containers[0].resources)

    # The claim is not owned by the NIMCache (Retain), and holds the files with the completion marker.
    core = client.CoreV1Api(cluster.api)
    claim = core.read_namespaced_persistent_volume_claim("smollm2-pvc", ns)
    assert not claim.metadata.owner_references
    volume = core.read_persistent_volume(claim.spec.volume_name)
    store = Path(volume.spec.host_path.path if volume.spec.host_path else volume.spec.local.path)
    marker = json.loads((store / ".nim-cache.json").read_text())
    assert marker["files"] == ready["status"]["progress"]["files"]
    assert (store / "model.safetensors").stat().st_size > 100 * 2**20

    # Two services mount it read-only and serve the model from it; the hub is not asked again.
    for name in ("cached-a", "cached-b"):
        apply(cluster, ns, nimservice(name, storage={"nimCache": {"name": "smollm2"}}))
    ready_s = {name: round(wait_ready(cluster, ns, name), 1) for name in ("cached-a", "cached-b")}
    for name in ("cached-a", "cached-b"):
        [runtime] = service_pods(cluster, ns, name)
        mount = next(m for m in runtime.spec.containers[0].volume_mounts if m.mount_path == "/model-store")
        assert mount.read_only is True
        env = {e.name: e.value for e in runtime.spec.containers[0].env}
        assert env["NIM_MODEL_PATH"] == "/model-store"
        volume_of = {v.name: v for v in runtime.spec.volumes}[mount.name]
        assert volume_of.persistent_volume_claim.claim_name == "smollm2-pvc"
        log = kubectl(cluster, "-n", ns, "logs", runtime.metadata.name)
        assert "Converting" not in log, log[-2000:]
    script = f"""
import json, openai
c = openai.OpenAI(base_url="http://cached-b.{ns}.svc:8000/v1", api_key="none", max_retries=0, timeout=60)
chat = c.chat.completions.create(model={MODEL!r}, max_tokens=8, temperature=0,
    messages=[{{"role": "user", "content": "What is the capital of France? Answer in one word."}}])
print(json.dumps({{"answer": chat.choices[0].message.content}}))
"""
    apply(cluster, ns, pod("cache-client", RUNTIME_NODE, ["python", "-c", script], image=RUNTIME_IMAGE))
    answer = json.loads(finished_pod_logs(cluster, ns, "cache-client").strip().splitlines()[-1])["answer"]
    assert "paris" in answer.lower(), answer
    assert hub_downloads(cluster, ns) == downloads_before + 1
    assert len(job_pods(cluster, ns, "smollm2")) == 1

    # Deleting the services leaves the cache and its claim as they were.
    kubectl(cluster, "-n", ns, "delete", "nimservice", "cached-a", "cached-b", "--wait=true", timeout=180)
    assert read_cache(cluster, ns, "smollm2")["status"]["state"] == "Ready"
    assert core.read_namespaced_persistent_volume_claim("smollm2-pvc", ns).status.phase == "Bound"
    print(json.dumps({"nimcache_fill_s": round(fill_s, 1), "ready_on_cache_s": ready_s, "hub_downloads": 1}))


def test_bad_caches_fail_with_a_reason_and_nothing_half_written_is_ready(
    cluster: Cluster, release: Release, hub: str
) -> None:
    ns = release.namespace
    core = client.CoreV1Api(cluster.api)
    # A claim of the same name that the NIMCache did not create: refused, not adopted.
    core.create_namespaced_persistent_volume_claim(
        ns,
        {
            "metadata": {"name": "taken-pvc"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )
    taken = nimcache("taken", hub)
    taken["spec"]["storage"]["pvc"]["name"] = "taken-pvc"
    unknown = nimcache("unknown", hub, model="no-such-model")
    small = nimcache("small", hub, size="1Mi")
    secretless = nimcache("secretless", hub, authSecret="no-such-secret")
    unreachable = nimcache("unreachable", hub)
    unreachable["spec"]["source"]["hf"]["endpoint"] = "http://nowhere.invalid:8090"
    apply(cluster, ns, taken, unknown, small, secretless, unreachable)
    expected = {
        "taken": ("PVCNotOwned", "taken-pvc"),
        "unknown": ("NotFound", "no-such-model"),
        "small": ("TooSmall", "storage.pvc.size"),
        "secretless": ("CreateContainerConfigError", "no-such-secret"),
    }
    for name, (reason, named) in expected.items():
        failed = wait_for(lambda n=name: cache_state(cluster, ns, n, "Failed"), timeout=240, what=f"{name} Failed")
        cond = condition(failed, "Failed")
        assert cond["status"] == "True", failed["status"]
        assert cond["reason"] == reason, failed["status"]
        assert named in cond["message"], failed["status"]
        assert condition(failed, "Ready")["status"] == "False"
    # The claim that was not ours is as the user made it.
    labels = core.read_namespaced_persistent_volume_claim("taken-pvc", ns).metadata.labels
    assert not labels, labels
    # An unreachable hub is retried with back-off, and says why while it is.
    retrying = wait_for(
        lambda: (
            (obj := cache_state(cluster, ns, "unreachable", "InProgress", "Failed"))
            and "Unreachable" in condition(obj, "Ready").get("message", "") + condition(obj, "Failed").get("reason", "")
            and obj
        ),
        timeout=180,
        what="the unreachable hub to be reported",
    )
    assert retrying["status"]["state"] != "Ready"
    # None of them wrote a completion marker (the too-small one refused before writing anything).
    for name in ("unknown", "small"):
        claim = core.read_namespaced_persistent_volume_claim(f"{name}-pvc", ns)
        if claim.spec.volume_name:
            volume = core.read_persistent_volume(claim.spec.volume_name)
            store = Path(volume.spec.host_path.path if volume.spec.host_path else volume.spec.local.path)
            assert not (store / ".nim-cache.json").exists()
            assert not (store / "model.safetensors").exists()
    kubectl(cluster, "-n", ns, "delete", CACHES, *expected, "unreachable", "--wait=true", timeout=120)
