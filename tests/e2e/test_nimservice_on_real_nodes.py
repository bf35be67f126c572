"""NIMServices on the real nodes, reconciled by the operator installed with helm, as a user runs them.

One module, one operator release (the chart with ``localhost/nim-operator:dev``, watching only this
module's namespace so the in-process operator of tests/operator never meets it), and the tests in
the order a user meets things: the operator runs, SmolLM2 turns Ready and answers through its
Service's DNS name, survives the death of its engine, keeps its model on a PVC of the default
StorageClass, and reports pod-level failures in its status.
The runtime image is on ``real-0`` only (tests/cluster/lib.sh RUNTIME_NODES); the operator runs on
``real-1``.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.conftest import Cluster
from tests.e2e.conftest import (
    KUBECTL,
    MODEL,
    OPERATOR_IMAGE,
    READY_TIMEOUT_S,
    RUNTIME_IMAGE,
    RUNTIME_NODE,
    STORE,
    Release,
    apply,
    condition,
    finished_pod_logs,
    kubectl,
    load_seconds,
    nimservice,
    patch,
    pod,
    pod_ready,
    read,
    service_pods,
    state,
    wait_ready,
    warnings_for,
)
from tests.operator.conftest import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]


def test_operator_runs_as_a_pod_under_the_charts_identity(cluster: Cluster, release: Release) -> None:
    operator = client.CoreV1Api(cluster.api).read_namespaced_pod(release.operator_pod, release.namespace)
    assert operator.spec.node_name == "real-1"
    assert operator.status.phase == "Running"
    assert pod_ready(operator)
    # The chart's own ServiceAccount, not the namespace's default one.
    account = client.CoreV1Api(cluster.api).read_namespaced_service_account(
        operator.spec.service_account_name, release.namespace
    )
    assert account.metadata.labels["app.kubernetes.io/instance"] == release.name
    container = operator.spec.containers[0]
    assert container.image == OPERATOR_IMAGE
    assert operator.spec.security_context.run_as_non_root is True
    assert container.security_context.read_only_root_filesystem is True
    assert container.security_context.allow_privilege_escalation is False
    # The container really runs as the non-root user the chart asks for.
    uid = kubectl(cluster, "-n", release.namespace, "exec", release.operator_pod, "--", "id", "-u").strip()
    assert uid == str(operator.spec.security_context.run_as_user), uid


def test_smollm2_turns_ready_and_answers_through_the_service_dns_name(cluster: Cluster, release: Release) -> None:
    ns = release.namespace
    apply(cluster, ns, nimservice("smollm2"))
    ready_s = wait_ready(cluster, ns, "smollm2")
    [runtime] = service_pods(cluster, ns, "smollm2")
    assert runtime.spec.node_name == RUNTIME_NODE
    nim = runtime.spec.containers[0]
    assert nim.startup_probe.http_get.path == "/v1/health/ready"
    assert nim.readiness_probe.http_get.path == "/v1/health/ready"
    assert nim.liveness_probe.http_get.path == "/v1/health/live"
    status = runtime.status.container_statuses[0]
    assert status.started
    assert status.ready
    assert status.restart_count == 0
    # Kubernetes marks the pod Ready only once the kubelet's probes passed, and the NIMService after it.
    pod_ready_at = next(c.last_transition_time for c in runtime.status.conditions if c.type == "Ready")
    service_ready_at = condition(read(cluster, ns, "smollm2"), "Ready")["lastTransitionTime"]
    assert service_ready_at >= pod_ready_at.strftime("%Y-%m-%dT%H:%M:%SZ")

    # A client in the cluster, with the OpenAI SDK, through http://<service>.<namespace>.svc:8000.
    script = f"""
import json, openai
c = openai.OpenAI(base_url="http://smollm2.{ns}.svc:8000/v1", api_key="none", max_retries=0, timeout=60)
chat = c.chat.completions.create(model={MODEL!r}, max_tokens=16, temperature=0,
    messages=[{{"role": "user", "content": "What is the capital of France? Answer in one word."}}])
chunks = list(c.chat.completions.create(model={MODEL!r}, max_tokens=16, stream=True,
    messages=[{{"role": "user", "content": "Count to five."}}]))
print(json.dumps({{"answer": chat.choices[0].message.content, "model": chat.model,
    "stream_text": "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices),
    "stream_chunks": len(chunks), "finish": [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1]}}))
"""
    apply(cluster, ns, pod("chat-client", RUNTIME_NODE, ["python", "-c", script], image=RUNTIME_IMAGE))
    result = json.loads(finished_pod_logs(cluster, ns, "chat-client").strip().splitlines()[-1])
    assert result["model"] == MODEL
    assert "paris" in result["answer"].lower(), result
    assert result["stream_chunks"] > 2, result
    assert result["stream_text"].strip(), result
    assert result["finish"] in ("stop", "length"), result

    # kubectl logs: the runtime's own log lines are JSON objects, one per line (vLLM's worker processes
    # and torch's C++ code still write plain lines to stderr beside them).
    lines = kubectl(cluster, "-n", ns, "logs", runtime.metadata.name).splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert all({"time", "level", "logger", "message"} <= e.keys() for e in entries), entries[:3]
    ours = [e["message"] for e in entries if e["logger"].startswith("nim_runtime")]
    assert any(m.startswith("Ready to serve") for m in ours), ours
    print(json.dumps({"nimservice_ready_s": round(ready_s, 1)}))


def test_engine_death_restarts_the_container_and_the_service_recovers(cluster: Cluster, release: Release) -> None:
    ns = release.namespace
    [runtime] = service_pods(cluster, ns, "smollm2")
    name = runtime.metadata.name
    restarts = runtime.status.container_statuses[0].restart_count
    # Inside the pod: kill vLLM's engine core, then ask the API until it answers; print as it goes,
    # since the runtime exits (and the exec with it) moments later.
    script = """
import os, signal, sys, time, urllib.error, urllib.request
def name(pid):
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode()
    except OSError:
        return ""
# (This script's own command line names it too.)
cores = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid() and "EngineCore" in name(p)]
print("killed", cores, flush=True)
for pid in cores:
    os.kill(pid, signal.SIGKILL)
body = b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}' % sys.argv[1].encode()
deadline = time.monotonic() + 5
while time.monotonic() < deadline:
    t0 = time.monotonic()
    req = urllib.request.Request("http://127.0.0.1:8000/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        code = urllib.request.urlopen(req, timeout=10).status
    except urllib.error.HTTPError as e:
        code = e.code
    print("answer", code, round(time.monotonic() - t0, 3), flush=True)
    if code == 503:
        break
    time.sleep(0.1)
"""
    exec_in_pod = [str(KUBECTL), f"--kubeconfig={cluster.kubeconfig}", "-n", ns, "exec", name, "--"]
    proc = subprocess.run(
        [*exec_in_pod, "python", "-c", script, MODEL],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = proc.stdout.splitlines()
    assert lines, proc.stderr
    assert lines[0].startswith("killed ["), proc.stdout + proc.stderr
    assert lines[0] != "killed []", "no EngineCore process in the pod"
    answers = [line.split() for line in lines if line.startswith("answer")]
    assert answers, proc.stdout + proc.stderr
    assert answers[-1][1] == "503", proc.stdout + proc.stderr
    assert float(answers[-1][2]) < 2.0, answers  # a fast 503, not a hang

    # The runtime exits non-zero; the kubelet restarts the container; the service dips and recovers.
    seen: set[str | None] = set()

    def restarted() -> bool:
        seen.add(state(read(cluster, ns, "smollm2")))
        current = client.CoreV1Api(cluster.api).read_namespaced_pod(name, ns).status.container_statuses[0]
        return bool(current.restart_count > restarts)

    wait_for(restarted, timeout=60, what="the kubelet to restart the runtime container")
    current = client.CoreV1Api(cluster.api).read_namespaced_pod(name, ns).status.container_statuses[0]
    assert current.last_state.terminated.exit_code != 0

    def recovered() -> bool:
        now = state(read(cluster, ns, "smollm2"))
        seen.add(now)
        return now == "Ready" and bool(seen & {"NotReady", "Pending"})

    wait_for(recovered, timeout=READY_TIMEOUT_S, what="the NIMService to go NotReady and then Ready again")


LOAD_CLIENT = """
import json, os, threading, time, openai
c = openai.OpenAI(base_url="http://smollm2.{ns}.svc:8000/v1", api_key="none", max_retries=0, timeout=120)
results = []
def worker(stream):
    while not os.path.exists("/tmp/stop"):
        t0 = time.time()
        try:
            if stream:
                chunks = list(c.chat.completions.create(model={model!r}, max_tokens=24, stream=True,
                    messages=[{{"role": "user", "content": "Tell me about the sea."}}]))
                finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1]
                results.append((t0, time.time(), "ok" if finish in ("stop", "length") else "cut"))
            else:
                c.chat.completions.create(model={model!r}, max_tokens=8,
                    messages=[{{"role": "user", "content": "Say hello."}}])
                results.append((t0, time.time(), "ok"))
        except Exception as e:
            results.append((t0, time.time(), "failed: " + repr(e)[:200]))
        # A steady stream, not a saturating one: two cores must still start the new pods.
        time.sleep(0.5)
threads = [threading.Thread(target=worker, args=(s,)) for s in (True, False)]
for t in threads:
    t.start()
print("started", flush=True)
for t in threads:
    t.join()
print(json.dumps(results), flush=True)
"""


@pytest.mark.timeout(1500)
def test_rolling_update_under_load_fails_no_request(cluster: Cluster, release: Release) -> None:
    ns = release.namespace
    patch(cluster, ns, "smollm2", {"replicas": 2})
    wait_ready(cluster, ns, "smollm2")
    old = {p.metadata.name for p in service_pods(cluster, ns, "smollm2")}
    assert len(old) == 2
    client_pod = pod(
        "load", RUNTIME_NODE, ["python", "-c", LOAD_CLIENT.format(ns=ns, model=MODEL)], image=RUNTIME_IMAGE
    )
    client_pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]
    client_pod["spec"]["volumes"] = [{"name": "tmp", "emptyDir": {}}]
    apply(cluster, ns, client_pod)
    core = client.CoreV1Api(cluster.api)

    def load_started() -> bool:
        if core.read_namespaced_pod("load", ns).status.phase != "Running":
            return False
        return "started" in kubectl(cluster, "-n", ns, "logs", "load")

    wait_for(load_started, timeout=120, what="the load client to start")
    time.sleep(10)  # steady traffic on both old replicas first
    rollout_started = time.time()
    patch(cluster, ns, "smollm2", {"env": [{"name": "E2E_ROLLOUT", "value": "1"}]})

    def rolled() -> bool:
        pods = service_pods(cluster, ns, "smollm2")
        names = {p.metadata.name for p in pods}
        return len(pods) == 2 and not names & old and all(pod_ready(p) for p in pods)

    wait_for(rolled, timeout=2 * READY_TIMEOUT_S, what="both replicas to be replaced and Ready")
    wait_ready(cluster, ns, "smollm2")
    rollout_ended = time.time()
    time.sleep(10)  # and steady traffic on both new ones
    kubectl(cluster, "-n", ns, "exec", "load", "--", "python", "-c", "open('/tmp/stop', 'w').close()")
    results = json.loads(finished_pod_logs(cluster, ns, "load", timeout=180).strip().splitlines()[-1])
    bad = [r for r in results if r[2] != "ok"]
    during = [r for r in results if rollout_started <= r[0] and r[1] <= rollout_ended]
    summary = {"requests": len(results), "during_rollout": len(during), "not_ok": len(bad)}
    print(json.dumps({"rolling_update": summary, "rollout_s": round(rollout_ended - rollout_started, 1)}))
    assert not bad, bad[:10]
    assert len(during) >= 10, summary


def test_model_store_pvc_is_filled_once_and_reused(cluster: Cluster, release: Release) -> None:
    ns = release.namespace
    # The pods take the model from the claim, not from the copy baked into the image.
    spec = nimservice(
        "stored",
        storage={"pvc": {"create": True, "size": "2Gi", "volumeAccessMode": "ReadWriteOnce"}},
        env=[{"name": "NIM_PREPARED_CACHE", "value": ""}],
    )
    apply(cluster, ns, spec)
    first_s = wait_ready(cluster, ns, "stored")
    core = client.CoreV1Api(cluster.api)
    claims = core.list_namespaced_persistent_volume_claim(ns).items
    [claim] = [c for c in claims if c.metadata.name.startswith("stored")]
    assert claim.status.phase == "Bound"
    assert claim.spec.storage_class_name == "local-path"
    volume = core.read_persistent_volume(claim.spec.volume_name)
    store = Path(volume.spec.host_path.path if volume.spec.host_path else volume.spec.local.path)
    configs = sorted(store.glob("models/*/config.json"))
    assert configs, sorted(str(p) for p in store.rglob("*"))[:20]
    written = configs[0].stat().st_mtime
    [first] = service_pods(cluster, ns, "stored")
    first_log = kubectl(cluster, "-n", ns, "logs", first.metadata.name)
    assert "Converting" in first_log

    # A new pod (the old one deleted, as on a node drain) starts from what the first one stored.
    core.delete_namespaced_pod(first.metadata.name, ns)
    wait_for(
        lambda: [p for p in service_pods(cluster, ns, "stored") if p.metadata.name != first.metadata.name],
        timeout=120,
        what="the replacement pod",
    )
    # The lost replica is reported (the runtime needs tens of seconds to load): only then is the Ready that
    # follows about the new pod rather than the status written before the deletion reached the operator.
    wait_for(lambda: state(read(cluster, ns, "stored")) != "Ready", timeout=60, what="the lost replica reported")
    second_s = wait_ready(cluster, ns, "stored")
    [second] = service_pods(cluster, ns, "stored")
    assert second.metadata.name != first.metadata.name
    assert configs[0].stat().st_mtime == written  # reused, not rewritten
    second_log = kubectl(cluster, "-n", ns, "logs", second.metadata.name)
    assert "Converting" not in second_log, second_log[-2000:]
    assert f"from {STORE}/models/" in second_log, second_log[-2000:]
    loads = {"first": load_seconds(first_log), "reused": load_seconds(second_log)}
    print(json.dumps({"model_store_load_s": loads, "ready_s": [round(first_s, 1), round(second_s, 1)]}))
    kubectl(cluster, "-n", ns, "delete", "nimservice", "stored", "--wait=true", timeout=180)


def test_pod_failures_reach_the_status_and_events_and_a_fix_recovers(cluster: Cluster, release: Release) -> None:
    ns = release.namespace
    apply(cluster, ns, nimservice("broken", image={"repository": "localhost/nim-runtime", "tag": "missing"}))

    def ready_reason(*reasons: str) -> dict[str, Any] | None:
        ready = condition(read(cluster, ns, "broken"), "Ready")
        return ready if ready.get("status") == "False" and ready.get("reason") in reasons else None

    pulled = wait_for(
        lambda: ready_reason("ImagePullBackOff", "ErrImagePull"), timeout=120, what="an image pull failure"
    )
    assert "localhost/nim-runtime:missing" in pulled["message"], pulled
    wait_for(
        lambda: any(e.reason in ("ImagePullBackOff", "ErrImagePull") for e in warnings_for(cluster, ns, "broken")),
        timeout=60,
        what="a Warning Event for the image pull",
    )

    # The right image, but a profile the runtime does not know: it exits at start, over and over.
    patch(
        cluster,
        ns,
        "broken",
        {
            "image": {"tag": "dev", "pullPolicy": "Never"},
            "env": [{"name": "NIM_MODEL_PROFILE", "value": "no-such-profile"}],
        },
    )
    crashed = wait_for(lambda: ready_reason("CrashLoopBackOff"), timeout=180, what="CrashLoopBackOff in the status")
    assert "no-such-profile" in crashed["message"], crashed  # the runtime's own error, from its termination message
    wait_for(
        lambda: any(e.reason == "CrashLoopBackOff" for e in warnings_for(cluster, ns, "broken")),
        timeout=60,
        what="a Warning Event for the crash loop",
    )
    patch(cluster, ns, "broken", {"env": []})
    wait_ready(cluster, ns, "broken")
    kubectl(cluster, "-n", ns, "delete", "nimservice", "broken", "--wait=true", timeout=180)


def test_the_operator_was_never_forbidden(cluster: Cluster, release: Release) -> None:
    """Last in the module: every call the operator made so far was allowed by the chart's RBAC."""
    logs = kubectl(cluster, "-n", release.namespace, "logs", release.operator_pod)
    assert "smollm2" in logs  # it did reconcile, so its silence below means something
    # An HTTP 403 in the client's request log ('..." 403 123'), or kopf's/the API's "Forbidden"; a bare
    # "403" also turns up inside uids and timestamps.
    refused = re.compile(r'" 403 |forbidden', re.IGNORECASE)
    denied = [line for line in logs.splitlines() if refused.search(line)]
    assert not denied, denied[:5]
