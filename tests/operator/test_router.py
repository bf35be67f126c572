"""The router on the real control plane, with the Gateway API's and the Inference Extension's own CRDs
(tests/cluster/router.sh installs them from their Go modules): each object is accepted by the API server's
validation of the project's CRD, owned by the NIMService, updated and removed when the spec changes.

No Gateway controller runs here (see docs and the report of issue 13 for why), so the routes' status is
written by nobody and the Routed condition says so; the reference endpoint picker (lwepp, built from the
Inference Extension's module) does run, as the ServiceAccount the operator made for it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from kubernetes import client

from tests.chart.conftest import service_account_kubeconfig
from tests.conftest import STATE, Cluster, free_port
from tests.operator.conftest import NIM, OperatorProcess, install_crd, wait_for

pytestmark = pytest.mark.cluster

LLAMA = {"image": {"repository": "nvcr.io/nim/meta/llama-3.1-8b-instruct", "tag": "1.3.3"}}
GATEWAY_API = ("gateway.networking.k8s.io", "v1")
INFERENCE_API = ("inference.networking.k8s.io", "v1")
LWEPP = STATE / "router" / "bin" / "lwepp"


def _custom(nim: NIM, api: tuple[str, str], plural: str, name: str, namespace: str | None = None) -> Any:
    try:
        return nim.custom.get_namespaced_custom_object(*api, namespace or nim.namespace, plural, name)
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise


def _gateway(nim: NIM, name: str, namespace: str | None = None) -> None:
    body = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name},
        "spec": {
            "gatewayClassName": "nim-test",
            "listeners": [
                {"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}}
            ],
        },
    }
    nim.custom.create_namespaced_custom_object(*GATEWAY_API, namespace or nim.namespace, "gateways", body)


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)


def _owned_by(obj: dict[str, Any], nimservice: dict[str, Any]) -> bool:
    refs = obj["metadata"].get("ownerReferences") or []
    return any(r["uid"] == nimservice["metadata"]["uid"] and r.get("controller") for r in refs)


def _router(**router: Any) -> dict[str, Any]:
    return {"hostDomainName": "demo.example.com", **router}


def test_routes_are_created_owned_updated_and_removed_with_the_spec(nim: NIM) -> None:
    _gateway(nim, "inference-gateway")
    gateway = {"name": "inference-gateway", "namespace": nim.namespace, "grpcRoutesEnabled": True}
    spec = {
        **LLAMA,
        "expose": {"service": {"grpcPort": 50051, "metricsPort": 8002}, "router": _router(gateway=gateway)},
    }
    nim.create("llama", spec)
    status = nim.wait_state("llama", "Ready")
    owner = nim.get("llama")
    http = _custom(nim, GATEWAY_API, "httproutes", "llama")
    grpc_route = _custom(nim, GATEWAY_API, "grpcroutes", "llama")
    assert http is not None
    assert grpc_route is not None
    assert _owned_by(http, owner)
    assert _owned_by(grpc_route, owner)
    assert http["spec"]["hostnames"] == [f"llama.{nim.namespace}.demo.example.com"]
    # Defaulted by the Gateway API CRD's schema: the API server took our route as its own kind.
    assert http["spec"]["parentRefs"][0]["kind"] == "Gateway"
    assert http["spec"]["rules"][0]["backendRefs"][0] == {
        "group": "",
        "kind": "Service",
        "name": "llama",
        "port": 8000,
        "weight": 1,
    }
    assert grpc_route["spec"]["rules"][0]["backendRefs"][0]["port"] == 50051
    service = nim.core.read_namespaced_service("llama", nim.namespace)
    assert [(p.name, p.port) for p in service.spec.ports] == [("api", 8000), ("grpc", 50051), ("metrics", 8002)]
    routed = _condition(status, "Routed")
    assert routed is not None
    assert (routed["status"], routed["reason"]) == ("False", "WaitingForGatewayController")
    assert "GatewayClass nim-test" in routed["message"]
    assert status["state"] == "Ready", "routes waiting for a controller do not make the service unready"

    nim.patch("llama", {"spec": {"expose": {"router": {"hostDomainName": "other.example.com"}}}})
    wait_for(
        lambda: (
            _custom(nim, GATEWAY_API, "httproutes", "llama")["spec"]["hostnames"]
            == [f"llama.{nim.namespace}.other.example.com"]
        ),
        what="the HTTPRoute to follow hostDomainName",
    )
    nim.patch("llama", {"spec": {"expose": {"router": {"gateway": {"grpcRoutesEnabled": False}}}}})
    wait_for(lambda: _custom(nim, GATEWAY_API, "grpcroutes", "llama") is None, what="the GRPCRoute to go")

    nim.patch("llama", {"spec": {"expose": {"router": {"gateway": None, "ingress": {"ingressClass": "nginx"}}}}})
    wait_for(lambda: _custom(nim, GATEWAY_API, "httproutes", "llama") is None, what="the HTTPRoute to go")
    networking = client.NetworkingV1Api(nim.api)
    ingress = wait_for(lambda: _ingress(networking, nim.namespace), what="the router's Ingress")
    assert ingress.spec.ingress_class_name == "nginx"
    assert ingress.spec.rules[0].host == f"llama.{nim.namespace}.other.example.com"
    assert ingress.spec.rules[0].http.paths[0].backend.service.port.name == "api"
    wait_for(
        lambda: _condition(nim.status("llama"), "Routed") is None, what="the Routed condition to go with the routes"
    )

    nim.patch("llama", {"spec": {"expose": {"router": None}}})
    wait_for(lambda: _ingress(networking, nim.namespace) is None, what="the Ingress to go")
    assert nim.wait_state("llama", "Ready")


def _ingress(api: client.NetworkingV1Api, namespace: str) -> client.V1Ingress | None:
    try:
        return api.read_namespaced_ingress("llama", namespace)
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise


def test_a_missing_gateway_leaves_the_service_ready_and_says_which_and_how(nim: NIM) -> None:
    """Degraded, not Failed: the pods serve through the Service, and the route binds once the Gateway exists."""
    gateway = {"name": "not-yet", "namespace": nim.namespace}
    nim.create("llama", {**LLAMA, "router": _router(gateway=gateway)})
    status = nim.wait_state("llama", "Ready")
    routed = _condition(status, "Routed")
    assert routed is not None
    assert (routed["status"], routed["reason"]) == ("False", "GatewayNotFound")
    assert f"spec.router.gateway names Gateway {nim.namespace}/not-yet, which does not exist" in routed["message"]
    assert f"llama.{nim.namespace}.svc.cluster.local:8000" in routed["message"]
    assert _custom(nim, GATEWAY_API, "httproutes", "llama") is not None, "the route is applied and waits"
    events = nim.core.list_namespaced_event(nim.namespace, field_selector="involvedObject.name=llama").items
    assert any(e.type == "Warning" and e.reason == "GatewayNotFound" for e in events)

    _gateway(nim, "not-yet")  # no spec edit: the next pass finds it
    routed = wait_for(
        lambda: (r := _condition(nim.status("llama"), "Routed")) and r["reason"] != "GatewayNotFound" and r,
        timeout=150,
        what="the Routed condition to see the new Gateway",
    )
    assert routed["reason"] == "WaitingForGatewayController"


def test_a_route_to_a_port_the_service_lacks_fails_and_applies_nothing(nim: NIM) -> None:
    backend = {"name": "llama", "port": 9999}
    nim.create(
        "llama", {**LLAMA, "router": _router(gateway={"name": "g", "namespace": nim.namespace, "backendRef": backend})}
    )
    status = nim.wait_state("llama", "Failed")
    failed = _condition(status, "Failed")
    assert failed is not None
    assert failed["reason"] == "RouteToMissingPort"
    assert "spec.router.gateway.backendRef.port is 9999" in failed["message"]
    assert nim.deployment("llama") is None, "nothing half-applied"
    assert _custom(nim, GATEWAY_API, "httproutes", "llama") is None
    nim.patch("llama", {"spec": {"router": {"gateway": {"backendRef": {"port": 8000}}}}})
    nim.wait_state("llama", "Ready")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"expose": {"router": _router(gateway={"name": "g", "namespace": "n", "grpcRoutesEnabled": True})}},
            "spec.expose.router.gateway.grpcRoutesEnabled needs spec.expose.service.grpcPort",
        ),
        ({"expose": {"service": {"grpcPort": 8000}}}, "grpcPort must differ from port"),
        ({"router": {"gateway": {"name": "g", "namespace": "n"}}}, "need router.hostDomainName"),
        (
            {"initContainers": [{"name": "a", "image": LLAMA["image"]}, {"name": "a", "image": LLAMA["image"]}]},
            "Duplicate value",
        ),
        ({"sidecarContainers": [{"name": "nim", "image": LLAMA["image"]}]}, "belong to the operator's containers"),
    ],
)
def test_the_api_server_refuses_what_cannot_be_built(
    crd: Cluster, namespace: str, spec: dict[str, Any], message: str
) -> None:
    body = {
        "apiVersion": "apps.nimoperator.dev/v1alpha1",
        "kind": "NIMService",
        "metadata": {"name": "x"},
        "spec": {**LLAMA, **spec},
    }
    with pytest.raises(client.ApiException) as raised:
        client.CustomObjectsApi(crd.api).create_namespaced_custom_object(
            "apps.nimoperator.dev", "v1alpha1", namespace, "nimservices", body
        )
    assert raised.value.status == 422
    assert message in raised.value.body


EPP = {
    "containerSpec": {
        "name": "epp",
        "image": {"repository": "registry.k8s.io/gateway-api-inference-extension/epp", "tag": "v1.3.1"},
    },
    "config": {"plugins": [{"type": "kv-cache-utilization-scorer"}], "schedulingProfiles": [{"name": "default"}]},
}
POOL_REF = {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "llama"}


def _epp_objects(nim: NIM) -> dict[str, Any]:
    rbac = client.RbacAuthorizationV1Api(nim.api)

    def read(fn: Any, name: str) -> Any:
        try:
            return fn(name, nim.namespace)
        except client.ApiException as err:
            if err.status == 404:
                return None
            raise

    return {
        "ServiceAccount": read(nim.core.read_namespaced_service_account, "llama-epp"),
        "Role": read(rbac.read_namespaced_role, "llama-epp"),
        "RoleBinding": read(rbac.read_namespaced_role_binding, "llama-epp"),
        "ConfigMap": read(nim.core.read_namespaced_config_map, "llama-epp-config"),
        "Service": read(nim.core.read_namespaced_service, "llama-epp"),
        "Deployment": read(nim.apps.read_namespaced_deployment, "llama-epp"),
        "InferencePool": _custom(nim, INFERENCE_API, "inferencepools", "llama"),
    }


@pytest.fixture
def lwepp(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Started lwepp processes, stopped after the test."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


class _Picker(subprocess.Popen[bytes]):
    health: int
    log: Path


def _run_lwepp(
    cluster: Cluster, namespace: str, account: str, tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> _Picker:
    """lwepp for pool ``llama`` as ServiceAccount ``account`` (a bound token, the cluster's CA), on free ports."""
    if not LWEPP.is_file():
        pytest.fail(f"{LWEPP} is missing: tests/cluster/build.sh builds it (router.sh)")
    kubeconfig = service_account_kubeconfig(cluster, namespace, account, tmp_path / f"{account}.kubeconfig")
    health, ext_proc, metrics = free_port(), free_port(), free_port()
    log = tmp_path / f"lwepp-{account}.log"
    args = [
        str(LWEPP), "--pool-name", "llama", "--pool-namespace", namespace,
        "--pool-group", "inference.networking.k8s.io", "--grpc-port", str(ext_proc),
        "--grpc-health-port", str(health), "--metrics-port", str(metrics),
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = _Picker(args, env={**os.environ, "KUBECONFIG": str(kubeconfig)}, stdout=out, stderr=subprocess.STDOUT)
    proc.health, proc.log = health, log
    started.append(proc)
    return proc


def _serving(port: int) -> bool:
    """The gRPC health of the picker (grpc.health.v1, raw bytes: status 1 is SERVING)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check", lambda b: b, lambda b: b)
        try:
            answer: bytes = check(b"\n\x13inference-extension", timeout=2)
        except grpc.RpcError:
            return False
    return answer == b"\x08\x01"


def test_the_endpoint_picker_and_its_pool_are_built_and_a_real_picker_syncs_the_pool(
    cluster: Cluster, nim: NIM, tmp_path: Path, lwepp: list[subprocess.Popen[bytes]]
) -> None:
    _gateway(nim, "inference-gateway")
    gateway = {"name": "inference-gateway", "namespace": nim.namespace, "backendRef": POOL_REF}
    nim.create("llama", {**LLAMA, "replicas": 2, "expose": {"router": _router(gateway=gateway, eppConfig=EPP)}})
    nim.wait_state("llama", "Ready")
    owner = nim.get("llama")
    objects = wait_for(lambda: (o := _epp_objects(nim)) and all(o.values()) and o, what="the endpoint picker's objects")
    pool = objects["InferencePool"]
    assert _owned_by(pool, owner)
    assert pool["spec"]["endpointPickerRef"]["kind"] == "Service", "defaulted by the Inference Extension's CRD"
    assert pool["spec"]["endpointPickerRef"]["failureMode"] == "FailClose"
    route = _custom(nim, GATEWAY_API, "httproutes", "llama")
    assert route["spec"]["rules"][0]["backendRefs"][0]["kind"] == "InferencePool"
    for kind in ("ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service", "Deployment"):
        refs = objects[kind].metadata.owner_references or []
        assert any(r.uid == owner["metadata"]["uid"] for r in refs), kind
    assert "kv-cache-utilization-scorer" in objects["ConfigMap"].data["default-plugins.yaml"]
    nim_pods = nim.core.list_namespaced_pod(nim.namespace, label_selector="app.kubernetes.io/name=llama").items
    assert len(nim_pods) == 2, "the picker's pod is not one of the NIM's"
    wait_for(
        lambda: nim.apps.read_namespaced_deployment("llama-epp", nim.namespace).status.ready_replicas == 1,
        what="the picker's Deployment",
    )
    assert nim.status("llama")["availableReplicas"] == 2

    if not LWEPP.is_file():
        pytest.fail(f"{LWEPP} is missing: tests/cluster/build.sh builds it (router.sh)")
    # The reference picker, as the picker's own ServiceAccount: the Role the operator made must let it read
    # the pool and the pods.
    picker = _run_lwepp(cluster, nim.namespace, "llama-epp", tmp_path, lwepp)
    wait_for(lambda: picker.poll() is not None or _serving(picker.health), timeout=60, what="lwepp to sync the pool")
    assert picker.poll() is None, picker.log.read_text()
    # Control: as a ServiceAccount without the operator's Role, the same picker never gets the pool.
    bare = _run_lwepp(cluster, nim.namespace, "default", tmp_path, lwepp)
    wait_for(lambda: "forbidden" in bare.log.read_text().lower(), timeout=60, what="the bare picker to be refused")
    assert not _serving(bare.health)

    nim.patch("llama", {"spec": {"expose": {"router": {"eppConfig": None, "gateway": {"backendRef": None}}}}})
    wait_for(lambda: not any(_epp_objects(nim).values()), what="every object of the picker to go")


HTTPROUTE_CRD = STATE / "router" / "gateway" / "gateway.networking.k8s.io_httproutes.yaml"


@pytest.fixture
def without_httproutes(crd: Cluster, operator_process: OperatorProcess) -> Iterator[client.ApiextensionsV1Api]:
    """A cluster whose API server stopped serving HTTPRoute (its CRD deleted while the operator runs and
    watches HTTPRoutes); put back afterwards."""
    api = client.ApiextensionsV1Api(crd.api)
    name = "httproutes.gateway.networking.k8s.io"
    api.delete_custom_resource_definition(name)

    def gone() -> bool:
        try:
            api.read_custom_resource_definition(name)
        except client.ApiException as err:
            return err.status == 404
        return False

    wait_for(gone, timeout=120, what="the HTTPRoute CRD to be gone")
    assert operator_process.proc is not None
    assert operator_process.proc.poll() is None, "the operator survives a watched CRD going away"
    try:
        yield api
    finally:
        install_crd(crd.api, HTTPROUTE_CRD)


def test_without_the_gateway_api_the_service_serves_degraded_and_heals(without_httproutes: Any, nim: NIM) -> None:
    nim.create("llama", {**LLAMA, "router": _router(gateway={"name": "g", "namespace": nim.namespace})})
    status = nim.wait_state("llama", "Ready")
    degraded = _condition(status, "Degraded")
    assert degraded is not None
    assert "does not serve HTTPRoute (gateway.networking.k8s.io/v1)" in degraded["message"]
    assert "install the Gateway API CRDs" in degraded["message"]
    assert _condition(status, "Routed") is None, "nothing to say about a route that cannot exist"
    install_crd(nim.api, HTTPROUTE_CRD)  # no spec edit
    wait_for(lambda: _custom(nim, GATEWAY_API, "httproutes", "llama"), timeout=150, what="the route after the CRD")
    status = wait_for(
        lambda: (s := nim.status("llama")) and _condition(s, "Degraded") is None and s,
        timeout=60,
        what="the Degraded condition to clear",
    )
    routed = _condition(status, "Routed")
    assert routed is not None
    assert routed["reason"] == "GatewayNotFound"
