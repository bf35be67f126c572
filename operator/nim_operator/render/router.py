"""The router: an Ingress, or Gateway API routes (HTTPRoute, GRPCRoute) attached to a named Gateway, as
NVIDIA's operator renders them; and what their state means for the NIMService. Pure.

A route names its Gateway by reference and binds when that Gateway (and a controller serving its class)
accepts it, which may happen after the route exists: Gateway API is built for that order. So a missing
Gateway does not fail the NIMService. Its pods still serve through its Service; the route is applied and
waits, and a ``Routed`` condition (False, reason ``GatewayNotFound``) names the Gateway and the fix. A
route to a port the NIMService's own Service lacks can never work, and is refused before anything is
applied (see :func:`route_refusal`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nim_operator import constants as c
from nim_operator.api.expose import Gateway, Router
from nim_operator.api.spec import NIMServiceSpec
from nim_operator.render.meta import Owner, child_metadata

GATEWAY_API = "gateway.networking.k8s.io/v1"
#: The condition that says whether the routes are attached to their Gateway (only while there are routes).
ROUTED_CONDITION = "Routed"


def router_path(spec: NIMServiceSpec) -> str:
    """Where the manifest put the router, for messages."""
    return "spec.expose.router" if spec.expose.router is not None else "spec.router"


def hostname(owner: Owner, router: Router) -> str:
    """<name>.<namespace>.<hostDomainName>, NVIDIA's host for both the Ingress and the routes.

    A fully qualified hostDomainName (trailing dot) is accepted by the field's pattern, but neither an
    Ingress rule nor a route hostname may end in a dot.
    """
    return f"{owner.name}.{owner.namespace}.{(router.host_domain_name or '').rstrip('.')}"


def _service_name(owner: Owner, spec: NIMServiceSpec) -> str:
    return spec.expose.service.name or owner.name


def render_router_ingress(owner: Owner, spec: NIMServiceSpec) -> dict[str, Any] | None:
    """The Ingress of ``router.ingress``: the host to the Service's api port, TLS when a Secret is named."""
    router = spec.effective_router
    if router is None or router.ingress is None or spec.inference_platform == "kserve":
        return None
    host = hostname(owner, router)
    backend = {"service": {"name": _service_name(owner, spec), "port": {"name": c.API_PORT_NAME}}}
    body: dict[str, Any] = {
        "ingressClassName": router.ingress.ingress_class,
        "rules": [{"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}],
    }
    if router.ingress.tls_secret_name:
        body["tls"] = [{"hosts": [host], "secretName": router.ingress.tls_secret_name}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": child_metadata(owner, owner.name, spec.labels, router.annotations),
        "spec": body,
    }


def _gateway(spec: NIMServiceSpec) -> Gateway | None:
    router = spec.effective_router
    if router is None or spec.inference_platform == "kserve":
        return None
    return router.gateway


def _route(owner: Owner, spec: NIMServiceSpec, gateway: Gateway, kind: str, rule: dict[str, Any]) -> dict[str, Any]:
    router = spec.effective_router or Router()
    return {
        "apiVersion": GATEWAY_API,
        "kind": kind,
        "metadata": child_metadata(owner, owner.name, spec.labels, router.annotations),
        "spec": {
            "parentRefs": [{"name": gateway.name, "namespace": gateway.namespace}],
            "hostnames": [hostname(owner, router)],
            "rules": [rule],
        },
    }


def render_http_route(owner: Owner, spec: NIMServiceSpec) -> dict[str, Any] | None:
    """Every path of the host to the Service's api port, or to ``gateway.backendRef`` (an InferencePool)."""
    gateway = _gateway(spec)
    if gateway is None or not gateway.http_routes_enabled:
        return None
    if gateway.backend_ref is not None:
        backend = gateway.backend_ref.model_dump(by_alias=True, exclude_none=True)
    else:
        backend = {"name": _service_name(owner, spec), "port": spec.expose.service.port}
    rule = {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": [backend]}
    return _route(owner, spec, gateway, "HTTPRoute", rule)


def render_grpc_route(owner: Owner, spec: NIMServiceSpec) -> dict[str, Any] | None:
    """Every gRPC call for the host to the Service's grpc port (admission makes sure there is one)."""
    gateway = _gateway(spec)
    port = spec.expose.service.grpc_port
    if gateway is None or not gateway.grpc_routes_enabled or port is None:
        return None
    backend = {"name": _service_name(owner, spec), "port": port}
    return _route(owner, spec, gateway, "GRPCRoute", {"backendRefs": [backend]})


def route_kinds(spec: NIMServiceSpec) -> list[str]:
    """The route kinds the spec asks for."""
    gateway = _gateway(spec)
    if gateway is None:
        return []
    grpc = gateway.grpc_routes_enabled and spec.expose.service.grpc_port is not None
    return [kind for kind, on in (("HTTPRoute", gateway.http_routes_enabled), ("GRPCRoute", grpc)) if on]


def route_refusal(owner: Owner, spec: NIMServiceSpec) -> tuple[str, str] | None:
    """(reason, message) when a route sends to a port the NIMService's own Service does not have."""
    gateway = _gateway(spec)
    ref = gateway.backend_ref if gateway is not None else None
    if ref is None or (ref.group or "") != "" or (ref.kind or "Service") != "Service":
        return None
    if ref.name != _service_name(owner, spec) or (ref.namespace or owner.namespace) != owner.namespace:
        return None  # someone else's Service: its controller reports a missing port in the route's status
    service = spec.expose.service
    ports = [p for p in (service.port, service.grpc_port, service.metrics_port) if p is not None]
    if ref.port in ports:
        return None
    path = f"{router_path(spec)}.gateway.backendRef.port"
    return (
        "RouteToMissingPort",
        f"{path} is {ref.port}, but Service {ref.name} of this NIMService has ports {', '.join(map(str, ports))}: "
        f"set {path} to one of them, or remove backendRef to route to the api port",
    )


@dataclass(frozen=True)
class RouteState:
    """The Routed condition: whether the routes are attached, and in whose words if not."""

    ok: bool
    reason: str
    message: str


def _parent_status(route: dict[str, Any], gateway: Gateway) -> dict[str, Any] | None:
    """The status a controller wrote on this route for our Gateway (routes may have other parents)."""
    for parent in (route.get("status") or {}).get("parents") or []:
        ref = parent.get("parentRef") or {}
        if (
            ref.get("name") == gateway.name
            and ref.get("namespace", route["metadata"]["namespace"]) == gateway.namespace
        ):
            return dict(parent)
    return None


def route_state(
    spec: NIMServiceSpec,
    *,
    gateway: dict[str, Any] | None,
    routes: list[dict[str, Any]],
    endpoint: str,
    unreadable: str | None = None,
) -> RouteState | None:
    """What the Gateway and its controller say about our routes; None when the spec asks for none.

    ``gateway`` is the named Gateway as read (None: it does not exist), ``routes`` the live routes,
    ``unreadable`` why the Gateway could not be read (e.g. RBAC of a namespaced install).
    """
    wanted = _gateway(spec)
    if wanted is None or not route_kinds(spec):
        return None
    where = f"{router_path(spec)}.gateway"
    named = f"Gateway {wanted.namespace}/{wanted.name}"
    if unreadable is not None:
        return RouteState(False, "GatewayUnreadable", f"{named} ({where}) could not be read: {unreadable}")
    if gateway is None:
        return RouteState(
            False,
            "GatewayNotFound",
            f"{where} names {named}, which does not exist: create it, or name an existing Gateway in {where}. "
            f"The routes are applied and attach when it appears; until then the NIMService serves only inside "
            f"the cluster, at {endpoint}",
        )
    gateway_class = (gateway.get("spec") or {}).get("gatewayClassName", "")
    for route in routes:
        kind_name = f"{route['kind']} {route['metadata']['name']}"
        parent = _parent_status(route, wanted)
        if parent is None:
            return RouteState(
                False,
                "WaitingForGatewayController",
                f"no controller has reported on {kind_name} for {named} yet: is the controller of GatewayClass "
                f"{gateway_class or '(none)'} running?",
            )
        controller = parent.get("controllerName", "its controller")
        for type_ in ("Accepted", "ResolvedRefs"):
            cond = next((x for x in parent.get("conditions") or [] if x.get("type") == type_), None)
            if cond is not None and cond.get("status") != "True":
                reason = cond.get("reason") or f"Not{type_}"
                return RouteState(
                    False, reason, f"{controller} reports on {kind_name} for {named}: {cond.get('message', reason)}"
                )
    kinds = ", ".join(f"{r['kind']} {r['metadata']['name']}" for r in routes)
    host = (routes[0]["spec"].get("hostnames") or ["*"])[0] if routes else "*"
    return RouteState(True, "Accepted", f"{kinds} attached to {named} for host {host}")
