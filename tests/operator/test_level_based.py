"""Level-based for every child and honest about the cluster: each test here failed on the operator that
watched only Deployments, recorded cluster problems as bad specs and applied new children unchecked.

kwok runs the pods; the API server, its admission (quota, validation) and the controllers are real.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import yaml
from kubernetes import client, watch

from tests.conftest import go_module_file
from tests.operator.conftest import NIM, OperatorProcess, wait_for

pytestmark = pytest.mark.cluster

SMOL = {"image": {"repository": "nim-runtime", "tag": "dev"}, "model": {"name": "HuggingFaceTB/SmolLM2-135M-Instruct"}}
#: The Prometheus Operator's own CRD, from its published module.
PROMETHEUS_OPERATOR = ("github.com/prometheus-operator/prometheus-operator", "v0.85.0")
SERVICE_MONITOR_CRD = "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), None)


def _exists(read: Any, name: str, namespace: str) -> Any:
    try:
        return read(name, namespace)
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise


def test_every_child_deleted_or_edited_by_hand_is_restored(nim: NIM) -> None:
    spec = {
        **SMOL,
        "replicas": 2,
        "expose": {"service": {"port": 8000}, "ingress": {"enabled": True}},
        "networkPolicy": {"enabled": True},
    }
    nim.create("drift", spec)
    nim.wait_state("drift", "Ready")
    net = client.NetworkingV1Api(nim.api)
    policy = client.PolicyV1Api(nim.api)
    readers = {
        "Service": nim.core.read_namespaced_service,
        "PodDisruptionBudget": policy.read_namespaced_pod_disruption_budget,
        "Ingress": net.read_namespaced_ingress,
        "NetworkPolicy": net.read_namespaced_network_policy,
    }
    first = {kind: read("drift", nim.namespace).metadata.uid for kind, read in readers.items()}
    nim.core.delete_namespaced_service("drift", nim.namespace)
    policy.delete_namespaced_pod_disruption_budget("drift", nim.namespace)
    net.delete_namespaced_ingress("drift", nim.namespace)
    net.delete_namespaced_network_policy("drift", nim.namespace)
    for kind, read in readers.items():
        wait_for(
            lambda read=read, kind=kind: (
                (o := _exists(read, "drift", nim.namespace)) is not None and o.metadata.uid != first[kind]
            ),
            timeout=20,
            what=f"the {kind} deleted by hand to be re-created",
        )
    # An edit of a kind without a generation (a Service) is undone as well.
    edit = [{"op": "replace", "path": "/spec/ports/0/port", "value": 9999}]  # a JSON patch
    edited = nim.core.patch_namespaced_service("drift", nim.namespace, edit)
    assert edited.spec.ports[0].port == 9999
    wait_for(
        lambda: [p.port for p in nim.core.read_namespaced_service("drift", nim.namespace).spec.ports] == [8000],
        timeout=20,
        what="the Service's port edited by hand to be restored",
    )


def test_a_refused_child_leaves_the_running_deployment_as_it_was(nim: NIM) -> None:
    nim.create("atomic", SMOL)
    nim.wait_state("atomic", "Ready")
    before = nim.deployment("atomic")
    assert before is not None
    # One edit: a new env var for the Deployment, and an Ingress the API server refuses (a bad host).
    nim.patch(
        "atomic",
        {
            "spec": {
                "env": [{"name": "NEW", "value": "1"}],
                "expose": {"ingress": {"enabled": True, "spec": {"rules": [{"host": "not a host!"}]}}},
            }
        },
    )
    status = nim.wait_state("atomic", "Failed")
    failed = _condition(status, "Failed")
    assert failed is not None
    assert failed["reason"] == "InvalidSpec"
    assert "Ingress" in failed["message"]
    after = nim.deployment("atomic")
    assert after is not None
    assert after.metadata.generation == before.metadata.generation, "the Deployment was changed half-way"
    assert "NEW" not in {e.name for e in after.spec.template.spec.containers[0].env}


def test_service_monitor_without_its_crd_degrades_and_heals_when_the_crd_arrives(nim: NIM) -> None:
    ext = client.ApiextensionsV1Api(nim.api)
    crd = yaml.safe_load(go_module_file(*PROMETHEUS_OPERATOR, SERVICE_MONITOR_CRD).read_text())
    name = crd["metadata"]["name"]
    if _exists(lambda n, _: ext.read_custom_resource_definition(n), name, ""):
        ext.delete_custom_resource_definition(name)
        wait_for(lambda: _exists(lambda n, _: ext.read_custom_resource_definition(n), name, "") is None, what="gone")
    nim.create("watched", {**SMOL, "metrics": {"enabled": True}})
    status = nim.wait_state("watched", "Ready")
    degraded = _condition(status, "Degraded")
    assert degraded is not None, status["conditions"]
    assert degraded["status"] == "True"
    assert "ServiceMonitor" in degraded["message"]
    assert "Prometheus Operator" in degraded["message"]
    custom = client.CustomObjectsApi(nim.api)
    try:
        ext.create_custom_resource_definition(crd)
        monitor = wait_for(
            lambda: _exists(
                lambda n, ns: custom.get_namespaced_custom_object(
                    "monitoring.coreos.com", "v1", ns, "servicemonitors", n
                ),
                "watched",
                nim.namespace,
            ),
            timeout=30,
            what="the ServiceMonitor, once its CRD is established, without a spec edit",
        )
        assert monitor["spec"]["endpoints"][0]["path"] == "/v1/metrics"
        wait_for(lambda: _condition(nim.status("watched"), "Degraded") is None, what="Degraded to clear")
        assert nim.status("watched")["state"] == "Ready"
    finally:
        ext.delete_custom_resource_definition(name)


def test_a_cluster_problem_is_retried_with_its_own_reason_and_heals_without_a_spec_edit(nim: NIM) -> None:
    """A quota that forbids Services is the cluster's problem, not the spec's: it is named (Forbidden, with
    the API server's words), retried with backoff, and gone once the quota is."""
    quota = client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="no-services"),
        spec=client.V1ResourceQuotaSpec(hard={"count/services": "0"}),
    )
    nim.core.create_namespaced_resource_quota(nim.namespace, quota)
    wait_for(
        lambda: (nim.core.read_namespaced_resource_quota("no-services", nim.namespace).status.hard or {}) != {},
        what="the quota to be counted",
    )
    nim.create("quota", SMOL)
    failed = wait_for(
        lambda: (c := _condition(nim.status("quota"), "Failed")) is not None and c["reason"] == "Forbidden" and c,
        what="the quota's refusal in status",
    )
    assert failed["status"] == "False", "a cluster problem is not a failed spec"
    assert "exceeded quota" in failed["message"]
    assert "retried" in failed["message"]
    time.sleep(3)
    assert nim.status("quota")["state"] != "Failed"
    nim.core.delete_namespaced_resource_quota("no-services", nim.namespace)
    nim.wait_state("quota", "Ready", timeout=90)
    assert _condition(nim.status("quota"), "Failed")["reason"] == "Reconciled"  # type: ignore[index]
    assert nim.core.read_namespaced_service("quota", nim.namespace)


def test_zero_replicas_reads_scaled_to_zero(nim: NIM) -> None:
    nim.create("idle", {**SMOL, "replicas": 0})
    status = nim.wait_state("idle", "ScaledToZero")
    ready = _condition(status, "Ready")
    assert ready is not None
    assert ready["reason"] == "ScaledToZero"
    nim.patch("idle", {"spec": {"replicas": 1}})
    nim.wait_state("idle", "Ready")


def test_one_replica_rolls_out_with_a_surge_pod(nim: NIM) -> None:
    """The default strategy for one replica keeps it serving through a rollout when there is room."""
    nim.create("rolling", SMOL)
    nim.wait_state("rolling", "Ready")
    deployment = nim.deployment("rolling")
    assert deployment is not None
    assert deployment.spec.strategy.rolling_update.max_surge == 1
    assert deployment.spec.strategy.rolling_update.max_unavailable == 0
    nim.patch("rolling", {"spec": {"strategy": {"type": "Recreate"}}})
    wait_for(
        lambda: (d := nim.deployment("rolling")) is not None and d.spec.strategy.type == "Recreate", what="Recreate"
    )


def test_a_surge_pod_without_room_turns_the_rollout_in_place(nim: NIM) -> None:
    """The A10G node has one GPU: the surge pod of a one-replica rollout cannot be placed, so the operator
    replaces the pod in place rather than leave the rollout stuck forever. Pinned to that node by name:
    on the full cluster Karpenter would otherwise add an A10G node for the surge pod (and rightly so)."""
    spec = {
        "image": {"repository": "bench/unknown-model", "tag": "1"},
        "resources": {"limits": {"nvidia.com/gpu": 1}},
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A10G", "kubernetes.io/hostname": "kwok-a10g-0"},
    }
    nim.create("tight", spec)
    nim.wait_state("tight", "Ready")
    # The rollout below must start from a pod the Deployment controller counts available: an old pod it
    # has not yet seen Ready is scaled down at once, with no surge to block.
    deployment = wait_for(
        lambda: (
            (d := nim.deployment("tight")) is not None
            and d.status.observed_generation == d.metadata.generation
            and (d.status.available_replicas or 0) == 1
            and d
        ),
        what="the first pod to be available",
    )
    assert deployment.spec.strategy.rolling_update.max_surge == 1
    # Every version of the Deployment, from a watch: on kwok the in-place rollout and the return to the
    # default strategy both take under a second, which polling misses.
    strategies: set[int] = set()
    start = deployment.metadata.resource_version
    stop = threading.Event()

    def record() -> None:
        while not stop.is_set():
            stream = watch.Watch().stream(
                nim.apps.list_namespaced_deployment,
                nim.namespace,
                field_selector="metadata.name=tight",
                resource_version=start,
                timeout_seconds=2,
            )
            for event in stream:
                strategies.add(event["object"].spec.strategy.rolling_update.max_surge)

    recorder = threading.Thread(target=record, daemon=True)
    recorder.start()
    nim.patch("tight", {"spec": {"env": [{"name": "ROLL", "value": "1"}]}})

    def rolled() -> bool:
        d = nim.deployment("tight")
        if d is None:
            return False
        envs = {e.name for e in d.spec.template.spec.containers[0].env or []}
        done = d.status.observed_generation == d.metadata.generation and (d.status.updated_replicas or 0) >= 1
        return "ROLL" in envs and done and (d.status.available_replicas or 0) >= 1 and (d.status.replicas or 0) == 1

    try:
        wait_for(rolled, timeout=90, what="the rollout to finish")
    finally:
        stop.set()
        recorder.join(timeout=10)
    assert 0 in strategies, f"the surge pod had no GPU, the rollout should have gone in place: {strategies}"
    nim.wait_state("tight", "Ready")
    # Once the rollout is done there is nothing blocked: the next rollout tries a surge pod again.
    wait_for(
        lambda: (d := nim.deployment("tight")) is not None and d.spec.strategy.rolling_update.max_surge == 1,
        what="the default strategy to come back",
    )


def test_an_ingress_nothing_routes_degrades_until_its_class_appears(nim: NIM) -> None:
    net = client.NetworkingV1Api(nim.api)
    name = f"nim-test-{nim.namespace}"
    ingress = {"enabled": True, "spec": {"ingressClassName": name}}
    nim.create("routed", {**SMOL, "expose": {"ingress": ingress}})
    status = nim.wait_state("routed", "Ready")
    degraded = _condition(status, "Degraded")
    assert degraded is not None
    assert f"names IngressClass {name}, which the cluster does not have" in degraded["message"]
    net.create_ingress_class(
        client.V1IngressClass(
            metadata=client.V1ObjectMeta(name=name), spec=client.V1IngressClassSpec(controller="x.io/c")
        )
    )
    try:
        wait_for(lambda: _condition(nim.status("routed"), "Degraded") is None, what="Degraded to clear")
    finally:
        net.delete_ingress_class(name)
    wait_for(lambda: _condition(nim.status("routed"), "Degraded") is not None, what="Degraded to come back")


def test_the_operator_survives_a_crd_that_comes_and_goes(nim: NIM, operator_process: OperatorProcess) -> None:
    """kopf stops every watch when one watch of a vanished CRD sees a 404 (a CRD deleted while its watch
    is opened or reconnects): the operator must keep serving every other service."""
    ext = client.ApiextensionsV1Api(nim.api)
    crd = yaml.safe_load(go_module_file(*PROMETHEUS_OPERATOR, SERVICE_MONITOR_CRD).read_text())
    name = crd["metadata"]["name"]
    for i in range(8):
        if _exists(lambda n, _: ext.read_custom_resource_definition(n), name, "") is None:
            ext.create_custom_resource_definition(crd)
        time.sleep(i % 3)
        ext.delete_custom_resource_definition(name)
        wait_for(lambda: _exists(lambda n, _: ext.read_custom_resource_definition(n), name, "") is None, what="gone")
    time.sleep(3)
    assert operator_process.proc is not None
    assert operator_process.proc.poll() is None, "the operator exited"
    nim.create("after-churn", SMOL)
    nim.wait_state("after-churn", "Ready")


def test_another_service_taking_gpus_rewrites_nothing_of_a_running_one(nim: NIM) -> None:
    """Free GPUs steer new decisions; a running service's decision sticks, and how many GPUs others hold
    at the moment is not news for it: its status is not rewritten on the next resync (15 s in tests)."""
    nim.create("calm", SMOL)
    nim.wait_state("calm", "Ready")
    time.sleep(2)
    before = nim.get("calm")["metadata"]["resourceVersion"]
    hog = {
        "image": {"repository": "bench/unknown-model", "tag": "1"},
        "resources": {"limits": {"nvidia.com/gpu": 1}},
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A10G"},
    }
    nim.create("hog", hog)
    time.sleep(20)  # a resync of every service
    assert nim.get("calm")["metadata"]["resourceVersion"] == before, nim.status("calm")
