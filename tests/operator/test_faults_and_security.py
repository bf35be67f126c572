"""The operator under faults (killed, API server paused, children edited) and its security defaults."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.conftest import REPO, STATE
from tests.operator.conftest import NIM, OperatorProcess, wait_for

pytestmark = pytest.mark.cluster

SMOL = {"image": {"repository": "nim-runtime", "tag": "dev"}, "model": {"name": "HuggingFaceTB/SmolLM2-135M-Instruct"}}
# Our runtime serving Llama 3.1 8B from our catalog: its ids are ours (NVIDIA's own image takes only the
# ids of the manifest it carries; see test_nim_manifests_on_cluster.py).
LLAMA_8B = {"image": {"repository": "nim-runtime", "tag": "dev"}, "model": {"name": "meta/llama-3.1-8b-instruct"}}


def _env(nim: NIM, name: str) -> dict[str, str | None]:
    deployment = nim.deployment(name)
    assert deployment is not None
    return {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}


def test_child_edited_by_hand_is_restored(nim: NIM) -> None:
    nim.create("edited", SMOL)
    nim.wait_state("edited", "Ready")
    patch = {
        "spec": {
            "template": {
                "spec": {"containers": [{"name": "nim", "env": [{"name": "NIM_MODEL_PROFILE", "value": "hacked"}]}]}
            }
        }
    }
    edited = nim.apps.patch_namespaced_deployment("edited", nim.namespace, patch)
    # Read from the patch's answer: the operator may undo the edit before a fresh read could see it.
    assert {e.name: e.value for e in edited.spec.template.spec.containers[0].env}["NIM_MODEL_PROFILE"] == "hacked"
    wait_for(lambda: _env(nim, "edited")["NIM_MODEL_PROFILE"] == "vllm-bf16-tp1", what="the edit to be undone")


def test_operator_killed_mid_reconcile_converges(nim: NIM, operator_process: OperatorProcess) -> None:
    names = [f"svc-{i}" for i in range(5)]
    for name in names:
        nim.create(name, SMOL)
    operator_process.kill()
    try:
        time.sleep(1)
    finally:
        operator_process.start()
    for name in names:
        nim.wait_state(name, "Ready", timeout=90)
    deployments = nim.apps.list_namespaced_deployment(nim.namespace).items
    assert sorted(d.metadata.name for d in deployments) == names
    services = nim.core.list_namespaced_service(nim.namespace).items
    assert sorted(s.metadata.name for s in services) == names


@pytest.fixture
def paused_apiserver() -> Iterator[int]:
    pid = int((STATE / "pids" / "apiserver.pid").read_text())
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGCONT)  # never leave the shared control plane frozen


def test_api_server_paused_during_reconcile_converges(nim: NIM, paused_apiserver: int) -> None:
    names = [f"pause-{i}" for i in range(3)]
    for name in names:
        nim.create(name, SMOL)
    os.kill(paused_apiserver, signal.SIGSTOP)
    time.sleep(8)
    os.kill(paused_apiserver, signal.SIGCONT)
    for name in names:
        nim.wait_state(name, "Ready", timeout=120)


def test_secret_value_never_leaves_the_secret(nim: NIM, operator_process: OperatorProcess) -> None:
    value = f"s3cr3t-{uuid.uuid4().hex}"
    nim.core.create_namespaced_secret(
        nim.namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="ngc"), string_data={"NGC_API_KEY": value})
    )
    nim.create("secretive", {**SMOL, "authSecret": "ngc"})
    nim.wait_state("secretive", "Ready")
    deployment = nim.deployment("secretive")
    assert deployment is not None
    env = {e.name: e for e in deployment.spec.template.spec.containers[0].env}
    assert env["NGC_API_KEY"].value is None
    assert env["NGC_API_KEY"].value_from.secret_key_ref.name == "ngc"
    seen = [
        json.dumps(nim.get("secretive")),
        json.dumps(nim.api.sanitize_for_serialization(deployment)),
        json.dumps(nim.api.sanitize_for_serialization(nim.core.list_namespaced_event(nim.namespace))),
        operator_process.log.read_text(),
    ]
    assert not any(value in text for text in seen)


def test_runtime_pods_run_restricted(nim: NIM) -> None:
    nim.create("locked", SMOL)
    nim.wait_state("locked", "Ready")
    pod = nim.core.list_namespaced_pod(nim.namespace, label_selector="app.kubernetes.io/name=locked").items[0]
    assert pod.spec.automount_service_account_token is False
    assert pod.spec.security_context.run_as_non_root is True
    assert pod.spec.security_context.run_as_user == 1000
    assert pod.spec.security_context.seccomp_profile.type == "RuntimeDefault"
    container = pod.spec.containers[0].security_context
    assert container.allow_privilege_escalation is False
    assert container.capabilities.drop == ["ALL"]
    assert container.read_only_root_filesystem is True
    # The API server's own Pod Security admission agrees: the pod meets the "restricted" profile.
    nim.core.patch_namespace(
        nim.namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    nim.patch("locked", {"spec": {"replicas": 2}})
    wait_for(
        lambda: (s := nim.status("locked")).get("availableReplicas") == 2 and s,
        what="a second pod admitted under the restricted profile",
    )


def test_network_policy_admits_only_the_api_port(nim: NIM) -> None:
    net = client.NetworkingV1Api(nim.api)
    nim.create("fenced", {**SMOL, "networkPolicy": {"enabled": True}})
    nim.wait_state("fenced", "Ready")
    policy = net.read_namespaced_network_policy("fenced", nim.namespace)
    assert policy.spec.policy_types == ["Ingress"]
    assert [(p.port, p.protocol) for p in policy.spec.ingress[0].ports] == [(8000, "TCP")]
    assert policy.spec.pod_selector.match_labels["app.kubernetes.io/name"] == "fenced"
    nim.patch("fenced", {"spec": {"networkPolicy": {"enabled": False}}})

    def gone() -> bool:
        try:
            net.read_namespaced_network_policy("fenced", nim.namespace)
        except client.ApiException as err:
            return err.status == 404
        return False

    wait_for(gone, what="the NetworkPolicy to be deleted")


def _cordon(nim: NIM, product: str, unschedulable: bool) -> list[str]:
    nodes = nim.core.list_node(label_selector=f"nvidia.com/gpu.product={product}").items
    for node in nodes:
        nim.core.patch_node(node.metadata.name, {"spec": {"unschedulable": unschedulable}})
    return [n.metadata.name for n in nodes]


def _relabel(nim: NIM, nodes: list[str], product: str) -> None:
    for name in nodes:
        nim.core.patch_node(name, {"metadata": {"labels": {"nvidia.com/gpu.product": product}}})


LLAMA_ON_OURS = {"image": {"repository": "nim-runtime", "tag": "dev"}, "model": {"name": "meta/llama-3.1-8b-instruct"}}


def test_decision_sticks_through_cordons_and_edits_and_moves_only_when_its_nodes_go(nim: NIM) -> None:
    nim.create("mover", LLAMA_ON_OURS)
    assert nim.wait_state("mover", "Ready")["profile"]["id"] == "vllm-fp8-tp1-h100"
    h100 = _cordon(nim, "NVIDIA-H100-80GB-HBM3", True)
    try:
        time.sleep(3)  # maintenance: every H100 node cordoned, none gone
        status = nim.status("mover")
        assert status["profile"]["id"] == "vllm-fp8-tp1-h100", "a cordon is not a removal"
        assert status["state"] == "Ready"
    finally:
        _cordon(nim, "NVIDIA-H100-80GB-HBM3", False)
    _relabel(nim, h100, "NVIDIA-RELABELLED-GPU")
    try:
        status = wait_for(
            lambda: (s := nim.status("mover"))["profile"]["id"] == "vllm-fp8-tp1-l40s" and s,
            what="re-placement on L40S once no H100 node remains",
        )
        assert status["profile"]["gpuProducts"] == ["NVIDIA-L40S"]
        assert "moved from vllm-fp8-tp1-h100" in status["profile"]["reason"]
        nim.wait_state("mover", "Ready")
    finally:
        _relabel(nim, h100, "NVIDIA-H100-80GB-HBM3")
    time.sleep(3)  # H100 nodes are back; the decision must not flap back
    assert nim.status("mover")["profile"]["id"] == "vllm-fp8-tp1-l40s"
    # Edits that do not touch placement keep it too, although H100 would rank first for a new service.
    nim.patch("mover", {"spec": {"replicas": 2, "env": [{"name": "EXTRA", "value": "1"}]}})
    status = wait_for(lambda: (s := nim.status("mover"))["availableReplicas"] == 2 and s, what="two replicas")
    assert status["profile"]["id"] == "vllm-fp8-tp1-l40s"
    assert "kept the earlier decision" in status["profile"]["reason"]
    # A placement input changing is a new decision.
    nim.patch("mover", {"spec": {"profileSelector": {"precision": "fp8"}}})
    wait_for(lambda: nim.status("mover")["profile"]["id"] == "vllm-fp8-tp1-h100", what="a fresh decision")


def test_manifest_from_a_config_map(nim: NIM) -> None:
    manifest = """
name: acme/tiny-chat
source: hf://acme/tiny-chat
max_model_len: 4096
license: apache-2.0
profiles:
  - {id: vllm-bf16-tp2-l40s, precision: bf16, tp: 2, gpu: L40S, min_gpu_memory_mib: 20000}
  - {id: vllm-bf16-tp1, precision: bf16, tp: 1, min_gpu_memory_mib: 90000}
"""
    nim.core.create_namespaced_config_map(
        nim.namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="acme-manifest"), data={"manifest.yaml": manifest}),
    )
    nim.create("acme", {"image": {"repository": "acme/runtime", "tag": "1"}, "modelManifest": "acme-manifest"})
    status = nim.wait_state("acme", "Ready")
    assert status["profile"]["id"] == "vllm-bf16-tp2-l40s"
    assert any("needs 90000" in r["why"] for r in status["profile"]["rejected"])
    assert _env(nim, "acme")["NIM_MODEL_PROFILE"] == "vllm-bf16-tp2-l40s"


def test_plan_explains_without_applying(nim: NIM, operator_process: OperatorProcess) -> None:
    started = datetime.datetime.now(datetime.UTC).replace(microsecond=0) - datetime.timedelta(seconds=1)
    result = subprocess.run(
        [sys.executable, "-m", "nim_operator", "plan", "-f", str(REPO / "examples" / "llama-3.1-70b-l40s.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "KUBECONFIG": str(operator_process.kubeconfig)},
    )
    assert "llama-3-1-70b: vllm-fp8-tp4-l40s" in result.stdout
    assert "not vllm-bf16-tp8-l40s:" in result.stdout
    # Other tests' namespaces may still be terminating, so look for a creation, not at totals.
    listed = nim.custom.list_cluster_custom_object("apps.nimoperator.dev", "v1alpha1", "nimservices")["items"]
    created = [
        o
        for o in listed
        if o["metadata"]["name"] == "llama-3-1-70b"
        and datetime.datetime.fromisoformat(o["metadata"]["creationTimestamp"].replace("Z", "+00:00")) >= started
    ]
    assert created == []
