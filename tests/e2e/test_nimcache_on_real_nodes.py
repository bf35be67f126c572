"""NIMCache on the real nodes: weights fetched once from a real hub, shared by NIMServices, kept.

The hub is olah (a PyPI package nobody here wrote) in a pod on ``real-1``, serving offline a git mirror
of the embedded SmolLM2 (tests/cluster/hub); the download Job runs the runtime image's ``nim-runtime
download`` (huggingface_hub's client) on ``real-0``, into a claim of the real local-path provisioner.
The operator is the chart's, as in test_nimservice_on_real_nodes (its own release for this module).
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.conftest import REPO, Cluster
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
    read,
    service_pods,
    state,
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


def claim_store(cluster: Cluster, namespace: str, claim_name: str) -> Path:
    """The host folder of a local-path claim (the real nodes share the host's filesystem)."""
    core = client.CoreV1Api(cluster.api)
    claim = core.read_namespaced_persistent_volume_claim(claim_name, namespace)
    volume = core.read_persistent_volume(claim.spec.volume_name)
    return Path(volume.spec.host_path.path if volume.spec.host_path else volume.spec.local.path)


def hub_bytes(cluster: Cluster, namespace: str, store: Path) -> int:
    """Bytes the hub served from the repository's files (each resolve GET of a file counted at its size)."""
    log = kubectl(cluster, "-n", namespace, "logs", "hub")
    served = re.findall(r"GET /HuggingFaceTB/SmolLM2-135M-Instruct/resolve/[^/ ]+/([^ ?]+)", log)
    return sum((store / name).stat().st_size for name in served if (store / name).is_file())


@dataclass
class Fill:
    seconds: float
    bytes: int
    files: int
    live: list[str]  # the Progress column's values seen while InProgress
    store: Path


@pytest.fixture(scope="module")
def filled(cluster: Cluster, release: Release, hub: str) -> Fill:
    """The SmolLM2 cache filled once from the hub, with what status showed on the way."""
    ns = release.namespace
    downloads_before = hub_downloads(cluster, ns)
    seen: list[tuple[str, str | None]] = []

    def done() -> dict[str, Any] | None:
        obj = read_cache(cluster, ns, "smollm2")
        status = obj.get("status") or {}
        shown = (status.get("state") or "", (status.get("progress") or {}).get("summary"))
        if not seen or seen[-1] != shown:
            seen.append(shown)
        return cache_state(cluster, ns, "smollm2", "Ready", "Failed")

    started = time.monotonic()
    apply(cluster, ns, nimcache("smollm2", hub))
    ready = wait_for(done, timeout=FILL_TIMEOUT_S, what="the cache")
    seconds = time.monotonic() - started
    assert ready["status"]["state"] == "Ready", json.dumps(ready["status"], indent=1)
    assert hub_downloads(cluster, ns) == downloads_before + 1
    progress = ready["status"]["progress"]
    live = [summary for state, summary in seen if state == "InProgress" and summary]
    print(json.dumps({"status_seen": seen}))
    return Fill(seconds, progress["bytes"], progress["files"], live, claim_store(cluster, ns, "smollm2-pvc"))


def test_a_cache_fills_once_showing_its_progress_while_it_downloads(
    cluster: Cluster, release: Release, filled: Fill
) -> None:
    ns = release.namespace
    ready = read_cache(cluster, ns, "smollm2")
    status = ready["status"]
    assert status["pvc"] == "smollm2-pvc"
    assert status["size"], status
    assert status["progress"]["files"] >= 3, status  # config, weights, tokenizer
    assert status["progress"]["percent"] == 100
    assert status["accessModes"] == ["ReadWriteOnce"]
    assert {p["name"] for p in status["profiles"]} == {"vllm-bf16-tp1", "vllm-cpu-bf16"}
    # Progress was in status while the download ran, read from the downloader's log by the operator:
    # before completion nothing else can put it there (the report comes with the pod's end).
    assert filled.live, "no progress was shown while the cache was InProgress"
    assert all(s.endswith(f"of {status['size']}") for s in filled.live), filled.live
    # kubectl shows it as users see it.
    table = kubectl(cluster, "-n", ns, "get", "nimcache", "smollm2")
    assert "PROGRESS" in table
    assert f"100% of {status['size']}" in table, table

    # The download ran as the Job's one pod, non-root, on the node asked for, and no GPU was involved.
    [worker] = job_pods(cluster, ns, "smollm2")
    assert worker.status.phase == "Succeeded"
    assert worker.spec.node_name == RUNTIME_NODE
    assert worker.spec.security_context.run_as_non_root is True
    assert worker.spec.containers[0].image == RUNTIME_IMAGE
    assert worker.spec.automount_service_account_token is False  # the pod reports through its log only
    assert "nvidia.com/gpu" not in str(worker.spec.containers[0].resources)
    lines = kubectl(cluster, "-n", ns, "logs", worker.metadata.name).splitlines()
    progress_lines = [json.loads(line)["progress"] for line in lines if line.startswith('{"progress"')]
    assert progress_lines[-1]["bytes"] == progress_lines[-1]["totalBytes"] == filled.bytes

    # The claim is not owned by the NIMCache (Retain), and holds the files with the completion marker.
    claim = client.CoreV1Api(cluster.api).read_namespaced_persistent_volume_claim("smollm2-pvc", ns)
    assert not claim.metadata.owner_references
    marker = json.loads((filled.store / ".nim-cache.json").read_text())
    assert marker["files"] == filled.files
    assert (filled.store / "model.safetensors").stat().st_size > 100 * 2**20


def _alone(cluster: Cluster, ns: str, body: dict[str, Any]) -> float:
    """Seconds from apply to Ready of one NIMService alone on the node; deleted again afterwards."""
    name = body["metadata"]["name"]
    apply(cluster, ns, body)
    seconds = wait_ready(cluster, ns, name)
    kubectl(cluster, "-n", ns, "delete", "nimservice", name, "--wait=true", timeout=180)
    wait_for(lambda: not service_pods(cluster, ns, name), timeout=180, what=f"{name}'s pods to go")
    return seconds


def on_cache(name: str, **spec: Any) -> dict[str, Any]:
    """A NIMService on the cache; the profile comes from storage.nimCache.profile, not spec.profile."""
    body = nimservice(name, storage={"nimCache": {"name": "smollm2", "profile": "vllm-cpu-bf16"}}, **spec)
    del body["spec"]["profile"]
    return body


@pytest.mark.timeout(1800)  # four runtime starts, two of them at once, on two shared cores
def test_services_share_the_filled_cache_with_one_download(cluster: Cluster, release: Release, filled: Fill) -> None:
    ns = release.namespace
    bytes_before = hub_bytes(cluster, ns, filled.store)
    # Time to Ready of one service on the filled cache, and of one on an empty emptyDir (the model baked
    # into the image, as a NIMService without storage runs it), each alone on the node.
    on_filled_s = _alone(cluster, ns, on_cache("timed-cache"))
    on_empty_dir_s = _alone(cluster, ns, nimservice("timed-emptydir", storage={"emptyDir": {}}))

    # Two services mount it read-only at once and serve the model from it; the hub is not asked again.
    started = time.monotonic()
    for name in ("cached-a", "cached-b"):
        apply(cluster, ns, on_cache(name))
    both = {name: round(wait_ready(cluster, ns, name), 1) for name in ("cached-a", "cached-b")}
    both_s = time.monotonic() - started
    for name in ("cached-a", "cached-b"):
        [runtime] = service_pods(cluster, ns, name)
        mount = next(m for m in runtime.spec.containers[0].volume_mounts if m.mount_path == "/model-store")
        assert mount.read_only is True
        env = {e.name: e.value for e in runtime.spec.containers[0].env}
        assert env["NIM_MODEL_PATH"] == "/model-store"
        assert env["NIM_MODEL_PROFILE"] == "vllm-cpu-bf16"
        volume_of = {v.name: v for v in runtime.spec.volumes}[mount.name]
        assert volume_of.persistent_volume_claim.claim_name == "smollm2-pvc"
        log = kubectl(cluster, "-n", ns, "logs", runtime.metadata.name)
        assert "Converting" not in log, log[-2000:]
    profile = read(cluster, ns, "cached-a")["status"]["profile"]
    assert profile["id"] == "vllm-cpu-bf16"
    assert "pinned by spec.storage.nimCache.profile" in profile["reason"]
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
    downloaded = hub_bytes(cluster, ns, filled.store) - bytes_before
    assert downloaded == 0, downloaded
    assert len(job_pods(cluster, ns, "smollm2")) == 1

    # Deleting the services leaves the cache and its claim as they were.
    kubectl(cluster, "-n", ns, "delete", "nimservice", "cached-a", "cached-b", "--wait=true", timeout=180)
    assert read_cache(cluster, ns, "smollm2")["status"]["state"] == "Ready"
    claim = client.CoreV1Api(cluster.api).read_namespaced_persistent_volume_claim("smollm2-pvc", ns)
    assert claim.status.phase == "Bound"
    print(
        json.dumps(
            {
                "nimcache_fill_s": round(filled.seconds, 1),
                "cache_bytes": filled.bytes,
                "progress_seen_while_downloading": filled.live,
                "ready_on_filled_cache_s": round(on_filled_s, 1),
                "ready_on_empty_emptydir_s": round(on_empty_dir_s, 1),
                "two_services_on_cache_ready_s": both,
                "two_services_both_ready_after_s": round(both_s, 1),
                "hub_bytes_for_the_two_services": downloaded,
                "hub_bytes_for_the_fill": hub_bytes(cluster, ns, filled.store),
            }
        )
    )


def test_what_status_says_about_profiles_and_sharing(cluster: Cluster, release: Release, filled: Fill) -> None:
    ns = release.namespace
    # An image the catalog does not know gets its profile from the cache field; one the cache does not
    # hold is refused, naming what it holds, and nothing is deployed.
    stranger = nimservice("wrong-profile", storage={"nimCache": {"name": "smollm2", "profile": "tensorrt_llm"}})
    for key in ("profile", "model"):
        del stranger["spec"][key]
    # Two replicas on a ReadWriteOnce claim: said in status (the pods are kept off every node meanwhile).
    crowded = on_cache("crowded", replicas=2, nodeSelector={"kubernetes.io/hostname": "no-such-node"})
    apply(cluster, ns, stranger, crowded)
    failed = wait_for(lambda: (o := read(cluster, ns, "wrong-profile")) and state(o) == "Failed" and o, what="Failed")
    cond = condition(failed, "Failed")
    assert cond["reason"] == "NIMCacheProfileMissing", failed["status"]
    assert "spec.storage.nimCache.profile: profile 'tensorrt_llm'" in cond["message"]
    assert "vllm-cpu-bf16" in cond["message"]
    assert not service_pods(cluster, ns, "wrong-profile")
    shared = wait_for(
        lambda: condition(read(cluster, ns, "crowded"), "StorageSharedAcrossNodes"), what="the sharing condition"
    )
    assert (shared["status"], shared["reason"]) == ("False", "ReadWriteOnce"), shared
    assert "NIMCache smollm2's claim smollm2-pvc is ReadWriteOnce" in shared["message"]
    assert "the 2 replicas can only run on that node" in shared["message"]
    kubectl(cluster, "-n", ns, "delete", "nimservice", "wrong-profile", "crowded", "--wait=true", timeout=180)


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


SAMPLES = REPO.parent / "shared" / "compat" / "nvidia-samples" / "caching"


@pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"NVIDIA's samples are not at {SAMPLES}")
def test_nvidia_sample_caches_on_a_real_node_fail_naming_what_is_missing(cluster: Cluster, release: Release) -> None:
    """NVIDIA's caching samples, apiVersion ours, pinned to the real node (else they land on a kwok node).

    Nothing here can reach NGC or huggingface.co; each sample must end not Ready with a reason naming
    that, or the Secret it lacks, and never loop.
    """
    ns = release.namespace
    core = client.CoreV1Api(cluster.api)
    docker = {"auths": {"nvcr.io": {"username": "$oauthtoken", "password": "not-a-key"}}}
    secrets = {
        "ngc-secret": ("kubernetes.io/dockerconfigjson", {".dockerconfigjson": json.dumps(docker)}),
        "ngc-api-secret": ("Opaque", {"NGC_API_KEY": "not-a-key"}),
        "hf-secret": ("Opaque", {"HF_TOKEN": "not-a-token"}),
    }  # the datastore sample's hf-auth and the mirrors' https-/aws-/jfrog- secrets are left missing
    for name, (type_, data) in secrets.items():
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        core.create_namespaced_secret(
            ns, client.V1Secret(metadata=client.V1ObjectMeta(name=name), type=type_, data=encoded)
        )
    names = []
    for path in sorted(SAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "NIMCache":
                continue
            name = f"nv-{path.parent.name}-{doc['metadata']['name']}"[:60].rstrip("-")
            spec = {
                **doc["spec"],
                "nodeSelector": {"kubernetes.io/hostname": RUNTIME_NODE},
                "tolerations": TOLERATE_REAL,
            }
            apply(
                cluster,
                ns,
                {"apiVersion": f"{GROUP}/{VERSION}", "kind": "NIMCache", "metadata": {"name": name}, "spec": spec},
            )
            names.append(name)
    assert len(names) == 6

    def reason(name: str) -> tuple[str, str, str]:
        status = read_cache(cluster, ns, name).get("status") or {}
        ready = condition({"status": status}, "Ready")
        return status.get("state", ""), ready.get("reason", ""), ready.get("message", "")

    def named(state_reason_message: tuple[str, str, str]) -> bool:
        state_, why, message = state_reason_message
        # An NGC source without model.profiles first asks its puller image for the manifest: that image
        # cannot be pulled here, so the profiles to cache cannot be chosen, and the fix is named.
        unreadable = why == "ManifestUnavailable" and "spec.source.ngc.model.profiles" in message
        return (state_ == "Failed" and (why in ("ImagePullBackOff", "CreateContainerConfigError") or unreadable)) or (
            why in ("Retrying", "Unreachable", "Unauthorized", "NotFound") and "huggingface.co" in message
        )

    last: dict[str, tuple[str, str, str]] = {}

    def settled() -> dict[str, tuple[str, str, str]] | None:
        last.clear()
        last.update({n: reason(n) for n in names})
        return dict(last) if all(named(r) for r in last.values()) else None

    try:
        seen = wait_for(settled, timeout=300, what="every sample to say what is missing")
    except AssertionError as err:
        raise AssertionError(f"{err}; what they said: {last}") from err
    for name, (state_, why, message) in seen.items():
        print(f"{name:55} {state_:10} {why}: {message[:160]}")
        assert state_ != "Ready"
        if why == "ImagePullBackOff":
            assert "nvcr.io/nim/" in message, message
        if why == "CreateContainerConfigError":
            assert "secret" in message.lower(), message
        pods = job_pods(cluster, ns, name)
        assert len(pods) <= 2, [p.metadata.name for p in pods]  # the Job's back-off, not a crash loop
        assert all(p.spec.restart_policy == "Never" for p in pods)
    kinds = {why for _, why, _ in seen.values()}
    assert kinds & {"ImagePullBackOff", "ManifestUnavailable"}  # the NGC puller images cannot be had here
    assert "CreateContainerConfigError" in kinds  # the datastore sample's hf-auth Secret does not exist
    kubectl(cluster, "-n", ns, "delete", CACHES, *names, "--wait=true", timeout=180)


def test_the_operator_was_never_forbidden(cluster: Cluster, release: Release) -> None:
    """Last in the module: every call the operator made (progress reads of pods/log too) was allowed."""
    logs = kubectl(cluster, "-n", release.namespace, "logs", release.operator_pod)
    assert "smollm2" in logs
    refused = re.compile(r'" 403 |forbidden', re.IGNORECASE)
    denied = [line for line in logs.splitlines() if refused.search(line)]
    assert not denied, denied[:5]
