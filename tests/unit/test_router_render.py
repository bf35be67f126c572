"""The router's objects as NVIDIA's operator renders them (Ingress, HTTPRoute, GRPCRoute, the endpoint
picker and its InferencePool), and what the Gateway's and controller's state means for status. Pure."""

from __future__ import annotations

from typing import Any

import pytest

from nim_operator import constants as c
from nim_operator.api.spec import NIMServiceSpec
from nim_operator.placement import Placement
from nim_operator.render import Owner, render_children
from nim_operator.render.epp import render_epp
from nim_operator.render.meta import selector_labels
from nim_operator.render.router import route_refusal, route_state

OWNER = Owner("llama", "team-a", "uid-1")
IMAGE = {"repository": "nvcr.io/nim/meta/llama-3.1-8b-instruct", "tag": "1.3.3"}
GATEWAY = {"name": "inference-gateway", "namespace": "gw"}
EPP_IMAGE = {"repository": "registry.k8s.io/gateway-api-inference-extension/epp", "tag": "v1.3.1"}
EPP = {
    "containerSpec": {"name": "epp", "image": EPP_IMAGE},
    "config": {"plugins": [{"type": "kv-cache-utilization-scorer"}]},
}


def _spec(**fields: Any) -> NIMServiceSpec:
    return NIMServiceSpec.model_validate({"image": IMAGE, **fields})


def _router(**router: Any) -> dict[str, Any]:
    return {"expose": {"router": {"hostDomainName": "demo.example.com", **router}}}


def _children(spec: NIMServiceSpec) -> dict[tuple[str, str], dict[str, Any] | None]:
    return {(ch.kind, ch.name): ch.body for ch in render_children(OWNER, spec, Placement(None))}


def test_router_ingress_is_nvidias_host_rule_to_the_api_port() -> None:
    for spec in (
        _spec(**_router(ingress={"ingressClass": "nginx", "tlsSecretName": "tls"})),
        _spec(
            router={"hostDomainName": "demo.example.com.", "ingress": {"ingressClass": "nginx", "tlsSecretName": "tls"}}
        ),
    ):
        ingress = _children(spec)[("Ingress", "llama")]
        assert ingress is not None
        assert ingress["spec"] == {
            "ingressClassName": "nginx",
            "rules": [
                {
                    "host": "llama.team-a.demo.example.com",
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": "llama", "port": {"name": c.API_PORT_NAME}}},
                            }
                        ]
                    },
                }
            ],
            "tls": [{"hosts": ["llama.team-a.demo.example.com"], "secretName": "tls"}],
        }
        assert ingress["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def test_gateway_renders_an_http_route_to_the_service_and_a_grpc_route_to_its_grpc_port() -> None:
    spec = _spec(
        expose={
            "service": {"name": "llm", "port": 9000, "grpcPort": 50051},
            "router": {
                "hostDomainName": "demo.example.com",
                "annotations": {"team": "a"},
                "gateway": {**GATEWAY, "grpcRoutesEnabled": True},
            },
        }
    )
    children = _children(spec)
    http, grpc = children[("HTTPRoute", "llama")], children[("GRPCRoute", "llama")]
    assert http is not None
    assert grpc is not None
    parent = [{"name": "inference-gateway", "namespace": "gw"}]
    assert http["apiVersion"] == grpc["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert http["spec"] == {
        "parentRefs": parent,
        "hostnames": ["llama.team-a.demo.example.com"],
        "rules": [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [{"name": "llm", "port": 9000}],
            }
        ],
    }
    assert grpc["spec"] == {
        "parentRefs": parent,
        "hostnames": ["llama.team-a.demo.example.com"],
        "rules": [{"backendRefs": [{"name": "llm", "port": 50051}]}],
    }
    assert http["metadata"]["annotations"] == {"team": "a"}
    service = children[("Service", "llm")]
    assert service is not None
    assert [p["name"] for p in service["spec"]["ports"]] == ["api", "grpc"]


def test_routes_turned_off_render_as_deletions() -> None:
    spec = _spec(**_router(gateway={**GATEWAY, "httpRoutesEnabled": False}))
    children = _children(spec)
    assert children[("HTTPRoute", "llama")] is None
    assert children[("GRPCRoute", "llama")] is None
    assert children[("InferencePool", "llama")] is None
    assert children[("Deployment", "llama-epp")] is None


def test_backend_ref_replaces_the_service_as_nvidia_does() -> None:
    ref = {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "llama"}
    http = _children(_spec(**_router(gateway={**GATEWAY, "backendRef": ref})))[("HTTPRoute", "llama")]
    assert http is not None
    assert http["spec"]["rules"][0]["backendRefs"] == [ref]


@pytest.mark.parametrize(
    ("ref", "refused"),
    [
        ({"name": "llama", "port": 9999}, True),
        ({"name": "llama", "port": 8000}, False),
        ({"name": "llama", "kind": "Service", "namespace": "team-a", "port": 9999}, True),
        ({"name": "someone-else", "port": 9999}, False),
        ({"name": "llama", "namespace": "other", "port": 9999}, False),
        ({"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "llama"}, False),
    ],
)
def test_a_route_to_a_port_our_service_lacks_is_refused(ref: dict[str, Any], refused: bool) -> None:
    found = route_refusal(OWNER, _spec(**_router(gateway={**GATEWAY, "backendRef": ref})))
    assert (found is not None) == refused
    if found is not None:
        reason, message = found
        assert reason == "RouteToMissingPort"
        assert "spec.expose.router.gateway.backendRef.port is 9999" in message
        assert "has ports 8000" in message


def _route(parents: list[dict[str, Any]] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "HTTPRoute", "metadata": {"name": "llama", "namespace": "team-a"}, "spec": {}}
    body["spec"]["hostnames"] = ["llama.team-a.demo.example.com"]
    if parents is not None:
        body["status"] = {"parents": parents}
    return body


def _parent(**conditions: str) -> dict[str, Any]:
    return {
        "parentRef": {"name": "inference-gateway", "namespace": "gw"},
        "controllerName": "example.com/gateway",
        "conditions": [{"type": t, "status": s, "reason": f"R{t}", "message": f"m {t}"} for t, s in conditions.items()],
    }


GW = {"metadata": {"name": "inference-gateway", "namespace": "gw"}, "spec": {"gatewayClassName": "istio"}}
ENDPOINT = "llama.team-a.svc.cluster.local:8000"


@pytest.mark.parametrize(
    ("gateway", "route", "expected"),
    [
        (None, _route(None), (False, "GatewayNotFound")),
        (GW, _route(None), (False, "WaitingForGatewayController")),
        (
            GW,
            _route([{**_parent(Accepted="True"), "parentRef": {"name": "other"}}]),
            (False, "WaitingForGatewayController"),
        ),
        (GW, _route([_parent(Accepted="False", ResolvedRefs="True")]), (False, "RAccepted")),
        (GW, _route([_parent(Accepted="True", ResolvedRefs="False")]), (False, "RResolvedRefs")),
        (GW, _route([_parent(Accepted="True", ResolvedRefs="True")]), (True, "Accepted")),
    ],
)
def test_route_state_says_what_the_gateway_and_its_controller_said(
    gateway: dict[str, Any] | None, route: dict[str, Any], expected: tuple[bool, str]
) -> None:
    spec = _spec(**_router(gateway=GATEWAY))
    state = route_state(spec, gateway=gateway, routes=[route], endpoint=ENDPOINT)
    assert state is not None
    assert (state.ok, state.reason) == expected
    if state.reason == "GatewayNotFound":
        assert "spec.expose.router.gateway names Gateway gw/inference-gateway, which does not exist" in state.message
        assert ENDPOINT in state.message, "says where the service still answers"
    if state.reason == "WaitingForGatewayController":
        assert "GatewayClass istio" in state.message
    if not state.ok and state.reason.startswith("R"):
        assert "example.com/gateway reports on HTTPRoute llama" in state.message


def test_no_route_no_routed_condition() -> None:
    assert route_state(_spec(), gateway=None, routes=[], endpoint=ENDPOINT) is None
    kserve = _spec(inferencePlatform="kserve", **_router(gateway=GATEWAY))
    assert route_state(kserve, gateway=None, routes=[], endpoint=ENDPOINT) is None
    unreadable = route_state(
        _spec(**_router(gateway=GATEWAY)), gateway=None, routes=[], endpoint=ENDPOINT, unreadable="forbidden"
    )
    assert unreadable is not None
    assert (unreadable.ok, unreadable.reason) == (False, "GatewayUnreadable")


def _epp(spec: NIMServiceSpec) -> dict[tuple[str, str], dict[str, Any]]:
    return {(kind, name): body for _, kind, name, body in render_epp(OWNER, spec) if body is not None}


def test_endpoint_picker_objects_are_nvidias() -> None:
    objects = _epp(_spec(image={**IMAGE, "pullSecrets": ["ngc"]}, **_router(gateway=GATEWAY, eppConfig=EPP)))
    assert sorted(objects) == [
        ("ConfigMap", "llama-epp-config"),
        ("Deployment", "llama-epp"),
        ("InferencePool", "llama"),
        ("Role", "llama-epp"),
        ("RoleBinding", "llama-epp"),
        ("Service", "llama-epp"),
        ("ServiceAccount", "llama-epp"),
    ]
    pool = objects[("InferencePool", "llama")]
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["spec"] == {
        "selector": {"matchLabels": selector_labels(OWNER)},
        "targetPorts": [{"number": 8000}],
        "endpointPickerRef": {"name": "llama-epp", "port": {"number": 9002}},
    }
    assert "kv-cache-utilization-scorer" in objects[("ConfigMap", "llama-epp-config")]["data"]["default-plugins.yaml"]
    pod = objects[("Deployment", "llama-epp")]["spec"]["template"]["spec"]
    epp = pod["containers"][0]
    assert epp["image"] == "registry.k8s.io/gateway-api-inference-extension/epp:v1.3.1"
    assert epp["args"][:6] == [
        "--pool-name",
        "llama",
        "--pool-namespace",
        "team-a",
        "--pool-group",
        "inference.networking.k8s.io",
    ]
    assert epp["args"][epp["args"].index("--config-file") + 1] == "/config/default-plugins.yaml"
    assert epp["args"][-2:] == ["--model-server-metrics-path", "/v1/metrics"]
    assert epp["readinessProbe"]["grpc"] == {"port": 9003}
    assert epp["securityContext"]["runAsNonRoot"] is True
    assert pod["serviceAccountName"] == "llama-epp"
    assert pod["imagePullSecrets"] == [{"name": "ngc"}]
    assert pod["volumes"][0] == {"name": "epp-config", "configMap": {"name": "llama-epp-config"}}
    service = objects[("Service", "llama-epp")]
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [
        ("grpc-ext-proc", 9002),
        ("http-metrics", 9090),
    ]
    role = objects[("Role", "llama-epp")]
    assert {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "watch", "list"]} in role["rules"]
    assert objects[("RoleBinding", "llama-epp")]["subjects"] == [
        {"kind": "ServiceAccount", "name": "llama-epp", "namespace": "team-a"}
    ]


def test_endpoint_picker_pods_are_never_taken_for_nim_pods() -> None:
    objects = _epp(_spec(**_router(eppConfig=EPP)))
    labels = objects[("Deployment", "llama-epp")]["spec"]["template"]["metadata"]["labels"]
    selector = selector_labels(OWNER)
    assert not selector.items() <= labels.items(), "the NIM Service, PDB and pool would select the picker"
    assert objects[("Service", "llama-epp")]["spec"]["selector"].items() <= labels.items()


def test_endpoint_picker_with_a_configmap_of_the_users_and_its_own_ports() -> None:
    epp = {
        "containerSpec": {"name": "epp", "image": EPP_IMAGE, "args": ["--custom"]},
        "configMapRef": {"name": "picker", "key": "plugins.yaml"},
        "ports": [{"name": "grpc-ext-proc", "containerPort": 9102, "protocol": "TCP"}],
    }
    objects = _epp(_spec(**_router(eppConfig=epp)))
    assert ("ConfigMap", "llama-epp-config") not in objects
    pod = objects[("Deployment", "llama-epp")]["spec"]["template"]["spec"]
    assert pod["volumes"][0]["configMap"] == {"name": "picker"}
    assert pod["containers"][0]["args"] == ["--custom"]
    assert objects[("InferencePool", "llama")]["spec"]["endpointPickerRef"]["port"] == {"number": 9102}
    assert objects[("Service", "llama-epp")]["spec"]["ports"] == [
        {"name": "grpc-ext-proc", "port": 9102, "targetPort": 9102, "protocol": "TCP"}
    ]


def test_missing_apis_name_the_field_what_to_install_and_how_to_do_without() -> None:
    """Routes and the pool are optional (Degraded without their API); KServe's InferenceService is not."""
    spec = _spec(router={"hostDomainName": "x.io", "gateway": GATEWAY, "eppConfig": EPP})
    children = {(ch.kind, ch.name): ch for ch in render_children(OWNER, spec, Placement(None))}
    route = children[("HTTPRoute", "llama")]
    assert route.requires is not None
    assert route.requires.startswith("spec.router.gateway asks for a HTTPRoute")
    assert "remove spec.router.gateway" in route.requires
    pool = children[("InferencePool", "llama")]
    assert pool.requires is not None
    assert "inference.networking.k8s.io" in pool.requires
    assert children[("Deployment", "llama")].requires is None
    kserve = _spec(inferencePlatform="kserve")
    isvc = next(ch for ch in render_children(OWNER, kserve, Placement(None)) if ch.kind == "InferenceService")
    assert isvc.requires is None, "without KServe nothing serves: Failed, not Degraded"
    assert isvc.unserved is not None
    assert "install KServe" in isvc.unserved
    assert "set spec.inferencePlatform to standalone" in isvc.unserved
